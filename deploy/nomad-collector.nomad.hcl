# nomad-collector as a Nomad system job: one instance on every client node, serving on
# the node's address with an ACL token and TLS, registered as a Nomad service that
# Prometheus finds with nomad_sd_configs.
#
#   nomad var put nomad/jobs/nomad-collector token=@token cert=@cert.pem key=@key.pem
#   nomad job run deploy/nomad-collector.nomad.hcl
#
# Driver: raw_exec. The daemon must see the host as it is: every cgroup hierarchy, /proc of
# every task, /sys/kernel/btf/vmlinux and bpffs, and it loads eBPF programs (CAP_BPF,
# CAP_PERFMON). `exec` gives a chroot, a private PID namespace (the /proc of the other
# tasks disappears) and capabilities from an allow-list that a client must widen with
# allow_caps; docker needs `privileged = true` plus host mounts of /sys/fs/cgroup, /proc
# and /sys/fs/bpf, which is raw_exec with more steps. raw_exec runs the task as root
# with the client's own privileges; the daemon then confines itself: once its programs
# are attached and its listener bound (the first milliseconds) it drops every
# capability, including the bounding set, and sets no_new_privs. Clients must enable the
# driver:
#
#   plugin "raw_exec" {
#     config { enabled = true }
#   }
#
# and, since anyone who may submit raw_exec jobs is root on the clients, grant
# `submit-job` in this job's namespace to operators only (ACL policy).
#
# The binary comes from the Debian package (`dpkg -i nomad-collector_*.deb` on each
# client; then `systemctl disable --now nomad-collector`, or the systemd unit and this job
# would run two daemons). Without the package, fetch it with an `artifact` block and set
# var.binary to "local/nomad-collector".

variable "binary" {
  type        = string
  default     = "/usr/bin/nomad-collector"
  description = "The nomad-collector binary on the client."
}

variable "port" {
  type        = number
  default     = 4649
  description = "Static port on every node (Nomad's own agent holds 4646)."
}

job "nomad-collector" {
  type        = "system"
  datacenters = ["*"]
  namespace   = "default"
  priority    = 90

  # One at a time: each restart reuses the pinned programs, so a rolling update loses no
  # CPU time of the node's tasks.
  update {
    max_parallel     = 1
    min_healthy_time = "10s"
    healthy_deadline = "2m"
    auto_revert      = true
  }

  group "collector" {
    network {
      port "http" {
        static = var.port
      }
    }

    restart {
      attempts = 5
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    service {
      name     = "nomad-collector"
      provider = "nomad"
      port     = "http"
      tags     = ["prometheus"]

      # Nomad's own checks: /v1/agent/health needs no token.
      check {
        name     = "health"
        type     = "http"
        protocol = "https"
        path     = "/v1/agent/health"
        interval = "10s"
        timeout  = "2s"
        # The certificate names the node, not the address Nomad checks from.
        tls_skip_verify = true
      }
    }

    task "collector" {
      driver = "raw_exec"

      config {
        command = var.binary
        args    = ["--config", "${NOMAD_TASK_DIR}/config.toml"]
      }

      # SIGTERM: the daemon finishes in-flight requests and leaves its programs pinned.
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      env {
        RUST_LOG = "info"
      }

      # Token, certificate and key from Nomad Variables (readable by this job only).
      template {
        destination   = "${NOMAD_SECRETS_DIR}/tokens"
        perms         = "0600"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          {{ with nomadVar "nomad/jobs/nomad-collector" }}{{ .token }}{{ end }}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/cert.pem"
        perms       = "0600"
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/nomad-collector" }}{{ .cert }}{{ end }}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/key.pem"
        perms       = "0600"
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/nomad-collector" }}{{ .key }}{{ end }}
        EOT
      }

      # The node's address and the static port; ACLs and TLS always on, since the
      # listener is reachable from the network.
      template {
        destination = "${NOMAD_TASK_DIR}/config.toml"
        change_mode = "restart"
        data        = <<-EOT
          interval = "1s"
          source = "auto"
          # The alloc dir lives in the client's data_dir: /v1/client/stats reports its disk.
          data_dirs = ["{{ env "NOMAD_ALLOC_DIR" }}"]

          [http]
          listen = "{{ env "NOMAD_ADDR_http" }}"
          tls_cert = "{{ env "NOMAD_SECRETS_DIR" }}/cert.pem"
          tls_key = "{{ env "NOMAD_SECRETS_DIR" }}/key.pem"

          [acl]
          tokens_file = "{{ env "NOMAD_SECRETS_DIR" }}/tokens"

          [ebpf]
          pin_root = "/sys/fs/bpf/nomad-collector"
        EOT
      }

      # Measured: 27 MiB RSS at 10,000 processes after a scrape, 41 MiB peak while BTF
      # is parsed at start-up; under 1% of a core at a 1 s interval.
      resources {
        cpu        = 100
        memory     = 64
        memory_max = 128
      }
    }
  }
}
