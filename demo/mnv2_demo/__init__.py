"""The demo around the operator: `mnv2 demo` (a local control plane, a node, the operator and a job)
and `mnv2 plot` (curves as a PNG). Installed by the `demo` extra; the operator never imports it."""
