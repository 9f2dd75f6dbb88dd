# The demo's stack: only OpenTofu's built-in provider, so nothing is downloaded. Its state is
# kept by the reference backend (an `http` backend the launcher adds), so a second run plans
# "No changes".
variable "greeting" {
  type    = string
  default = "hello"
}

locals {
  workers = ["a", "b", "c"]
}

resource "terraform_data" "worker" {
  for_each = toset(local.workers)
  input    = "${var.greeting} from ${each.key}"
}

resource "terraform_data" "who" {
  input = length(terraform_data.worker)
  # Runs in the worker container at apply time: shows who the run runs as.
  provisioner "local-exec" {
    command = "echo \"applied as $(id -u):$(id -g), workspace $(stat -c '%u:%g %A' /opt/spacelift/workspace)\""
  }
}

output "workers" {
  value = { for k, w in terraform_data.worker : k => w.output }
}
