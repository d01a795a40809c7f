//! A small initramfs per kernel: static busybox, the few modules the guest needs to reach
//! the host's files (resolved through `modules.dep`, decompressed on the host so
//! busybox's `insmod` can load them) and the guest's `/init`. Cached by kernel release
//! and content.

use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash, Hasher},
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::{guest, kernels::Kernel};
use crate::shell::announce;

/// virtio-pci (the transport), 9p over virtio (the host's files and the results
/// share), the virtio console (the test output) and overlayfs (a writable root over the
/// read-only host). Some are built in on newer kernels.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "overlay",
];

/// Returns the initramfs for `kernel`, building it if the cache has none for this
/// release and content.
pub fn get(kernel: &Kernel, cache: &Path) -> Result<PathBuf> {
    let modules = resolve(&kernel.modules, MODULES)?;
    let init = guest::init_script(&modules);
    let mut hasher = DefaultHasher::new();
    (&init, &modules, fs::read("/bin/busybox")?.len()).hash(&mut hasher);
    let dir = cache.join("initramfs");
    fs::create_dir_all(&dir)?;
    let image = dir.join(format!("{}-{:016x}.cpio", kernel.release, hasher.finish()));
    if image.exists() {
        return Ok(image);
    }
    announce(&format!(
        "building the initramfs for {} (busybox + {})",
        kernel.release,
        modules.join(" ")
    ));
    let staging = dir.join(format!("{}.staging", kernel.release));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    for sub in ["bin", "dev", "proc", "sys", "mnt", "lib/modules"] {
        fs::create_dir_all(staging.join(sub))?;
    }
    fs::copy("/bin/busybox", staging.join("bin/busybox"))?;
    for module in &modules {
        let source = kernel.modules.join(module);
        let name = Path::new(module)
            .file_name()
            .and_then(|n| n.to_str())
            .context("module file name")?;
        let plain = name
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_owned();
        let bytes = decompress(&source)?;
        fs::write(staging.join("lib/modules").join(plain), bytes)?;
    }
    let init_path = staging.join("init");
    fs::write(&init_path, init)?;
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;
    write_cpio(&staging, &image)?;
    fs::remove_dir_all(&staging)?;
    Ok(image)
}

/// `names`' module files (relative to the modules tree) in load order, dependencies
/// first; built-in ones are left out.
fn resolve(modules: &Path, names: &[&str]) -> Result<Vec<String>> {
    let dep = fs::read_to_string(modules.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", modules.display()))?;
    let builtin = fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let deps_of = |file: &str| -> Option<Vec<String>> {
        dep.lines().find_map(|l| {
            let (f, deps) = l.split_once(':')?;
            (f == file).then(|| deps.split_whitespace().map(str::to_owned).collect())
        })
    };
    let file_of = |name: &str| -> Option<String> {
        dep.lines().find_map(|l| {
            let f = l.split_once(':')?.0;
            (module_name(f) == name).then(|| f.to_owned())
        })
    };
    let mut order: Vec<String> = Vec::new();
    fn visit(file: String, deps_of: &dyn Fn(&str) -> Option<Vec<String>>, order: &mut Vec<String>) {
        if order.contains(&file) {
            return;
        }
        for dep in deps_of(&file).unwrap_or_default() {
            visit(dep, deps_of, order);
        }
        order.push(file);
    }
    for name in names {
        if builtin.lines().any(|l| module_name(l) == *name) {
            continue;
        }
        let Some(file) = file_of(name) else {
            bail!(
                "module {name} is neither built into {} nor in its modules.dep",
                modules.display()
            );
        };
        visit(file, &deps_of, &mut order);
    }
    Ok(order)
}

/// `kernel/fs/9p/9p.ko.xz` → `9p`.
fn module_name(file: &str) -> &str {
    let base = file.rsplit('/').next().unwrap_or(file);
    base.split(".ko").next().unwrap_or(base)
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", path.display());
    }
    Ok(out.stdout)
}

/// `find . | cpio -o -H newc` of `staging`, the format the kernel unpacks.
fn write_cpio(staging: &Path, image: &Path) -> Result<()> {
    let mut files = Vec::new();
    collect(staging, staging, &mut files)?;
    let partial = image.with_extension("partial");
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet", "-O"])
        .arg(&partial)
        .current_dir(staging)
        .stdin(Stdio::piped())
        .spawn()
        .context("running cpio")?;
    cpio.stdin
        .take()
        .context("cpio stdin")?
        .write_all(files.join("\n").as_bytes())?;
    if !cpio.wait()?.success() {
        bail!("cpio failed");
    }
    fs::rename(&partial, image)?;
    Ok(())
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        files.push(
            path.strip_prefix(root)?
                .to_str()
                .context("non-UTF-8 path")?
                .to_owned(),
        );
        if path.is_dir() {
            collect(root, &path, files)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::module_name;

    #[test]
    fn module_names_drop_folder_and_compression() {
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
        assert_eq!(module_name("kernel/net/9p/9pnet_virtio.ko"), "9pnet_virtio");
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio_pci.ko"),
            "virtio_pci"
        );
    }
}
