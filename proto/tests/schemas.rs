//! The JSON Schemas under `proto/schema/` are generated from the wire types; this test fails when
//! they are stale. Regenerate with `KUBESENT_UPDATE_SCHEMAS=1 cargo test -p kubesent-proto --test schemas`.

use std::path::PathBuf;

#[test]
fn checked_in_json_schemas_match_the_wire_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema");
    let update = std::env::var_os("KUBESENT_UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (file, schema) in kubesent_proto::json_schemas() {
        let path = dir.join(file);
        let expected = serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n";
        if update {
            std::fs::write(&path, &expected).expect("schema written");
            continue;
        }
        let found = std::fs::read_to_string(&path).unwrap_or_default();
        if found != expected {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "stale JSON Schemas {stale:?}; regenerate with KUBESENT_UPDATE_SCHEMAS=1 cargo test -p kubesent-proto --test schemas"
    );
}
