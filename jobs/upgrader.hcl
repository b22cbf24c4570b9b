# Example agent configuration (see README "Configuration" for every field).
state_dir = "/var/lib/upgrader"
kv_prefix = "upgrader/"

consul {
  address = "127.0.0.1:8500"
}

binary {
  path = "/usr/local/bin/consul"
}

release {
  url = "https://releases.hashicorp.com"
}

restart {
  mode = "systemd"
  unit = "consul.service"
}
