//! The API ceiling for `cargo xtask bench`: a plain warp 0.3 server answering
//! `GET /v1/client/allocation/<ID>/stats` with a fixed body, on the same runtime shape
//! as the daemon (tokio multi-thread, 2 workers).
//!
//! plain-warp <listen-addr> <body-file>

use std::net::SocketAddr;

use warp::Filter;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(file)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: plain-warp <listen-addr> <body-file>");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("listen address");
    let body = bytes::Bytes::from(std::fs::read(file).expect("body file"));
    let route = warp::get()
        .and(warp::path!(
            "v1" / "client" / "allocation" / String / "stats"
        ))
        .map(move |_id: String| {
            warp::reply::with_header(
                warp::http::Response::new(body.clone()),
                "content-type",
                "application/json",
            )
        });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(async move {
            let (bound, server) = warp::serve(route).bind_ephemeral(addr);
            println!("listening {bound}");
            server.await
        });
}
