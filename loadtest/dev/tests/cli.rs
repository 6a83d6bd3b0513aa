//! `kubesent-dev` as a developer meets it: its commands, and a clear refusal when the product binary it
//! runs is not where it looks.

use std::process::Command;

#[test]
fn the_developer_binary_offers_the_demo_the_simulators_and_the_load_tests() {
    let output = Command::new(env!("CARGO_BIN_EXE_kubesent-dev")).arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    for command in ["demo", "kube-sim", "gemini-sim", "loadtest"] {
        assert!(help.contains(command), "{command} in:\n{help}");
    }
}

#[test]
fn a_missing_product_binary_is_named_with_how_to_build_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_kubesent-dev"))
        .args(["--kubesent", "/nonexistent/kubesent", "demo"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("/nonexistent/kubesent does not exist"), "{stderr}");
    assert!(stderr.contains("cargo build -p kubesent -p kubesent-dev"), "{stderr}");
}
