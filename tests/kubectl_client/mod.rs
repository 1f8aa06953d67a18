//! Whether the installed kubectl can be the independent client of a test: on PATH and
//! v1.24 or later (the kubectl script uses `patch --subresource`, added in 1.24).

use std::process::Command;

/// The oldest kubectl minor the tests speak to.
const MIN_MINOR: u32 = 24;

/// Ok when kubectl is usable; Err says why not, for the test's SKIPPED line.
pub fn usable() -> Result<(), String> {
    let out = Command::new("kubectl")
        .args(["version", "--client", "-o", "json"])
        .output()
        .map_err(|e| format!("kubectl is not on PATH ({e}); .ci/run installs it"))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("`kubectl version --client -o json` is not JSON: {e}"))?;
    let minor: u32 = v["clientVersion"]["minor"]
        .as_str()
        .unwrap_or("")
        .trim_end_matches('+')
        .parse()
        .map_err(|_| format!("cannot read kubectl's version from {v}"))?;
    if minor < MIN_MINOR {
        return Err(format!(
            "kubectl 1.{minor} is older than 1.{MIN_MINOR}, which these tests need"
        ));
    }
    Ok(())
}
