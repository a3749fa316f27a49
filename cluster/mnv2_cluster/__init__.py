"""The local Kubernetes cluster of the tests and the demo: the upstream control plane and its nodes."""
