//! kubesent-kube-sim
