# Runs one upgrader on every node of the datacenter, next to a Consul agent managed by systemd.
# The upgrader needs root (it replaces /usr/local/bin/consul and restarts consul.service), hence raw_exec.
job "upgrader" {
  type        = "system"
  datacenters = ["dc1"]

  group "upgrader" {
    restart {
      attempts = 10
      delay    = "15s"
      interval = "10m"
      mode     = "delay"
    }

    task "upgrader" {
      driver = "raw_exec"

      config {
        command = "/usr/local/bin/upgrader"
        args    = ["agent", "-config", "${NOMAD_TASK_DIR}/upgrader.hcl"]
      }

      # The token comes from the environment (CONSUL_HTTP_TOKEN), never from the config file.
      template {
        destination = "${NOMAD_SECRETS_DIR}/consul.env"
        env         = true
        data        = <<-EOT
          CONSUL_HTTP_TOKEN={{ with nomadVar "nomad/jobs/upgrader" }}{{ .consul_token }}{{ end }}
        EOT
      }

      template {
        destination = "${NOMAD_TASK_DIR}/upgrader.hcl"
        data        = <<-EOT
          state_dir = "/var/lib/upgrader"
          kv_prefix = "upgrader/"
          consul {
            address = "127.0.0.1:8500"
          }
          binary {
            path = "/usr/local/bin/consul"
          }
          restart {
            mode = "systemd"
            unit = "consul.service"
          }
        EOT
      }

      # Stop gracefully: an upgrader mid-upgrade finishes its journal step or leaves it for the next start.
      kill_timeout = "60s"

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
