//! Cgroups are named where file handles are refused: this test runs itself
//! again without CAP_DAC_READ_SEARCH (dropped from the bounding set, so
//! root's exec does not regain it), where open_by_handle_at fails with
//! EPERM as under nspawn's or Docker's seccomp filter; the cgroup ids
//! are then named by the walk of the cgroup2 tree, and `file_handles` says
//! why handles are not used.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use rpcbind_proxy::host::cgroup;

/// Set in the environment of the run without the capability.
const CHILD: &str = "RBP_CGROUP_NAMES_WITHOUT_HANDLES";

/// A cgroup made for the test, removed when dropped.
struct Made {
    dir: std::path::PathBuf,
    id: u64,
    path: String,
}

impl Made {
    fn new() -> Made {
        let mount = cgroup::cgroup2_mountpoint()
            .expect("reading /proc/self/mountinfo")
            .expect("a cgroup2 hierarchy is mounted");
        let path = format!("/rbp-names-{}/probe.service", std::process::id());
        let dir = mount.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let id = std::fs::metadata(&dir).unwrap().ino();
        Made { dir, id, path }
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[test]
fn cgroups_are_named_without_file_handles() {
    if let Some(arg) = std::env::var_os(CHILD) {
        // The run without the capability: "ID PATH".
        let arg = arg.into_string().unwrap();
        let (id, path) = arg.split_once(' ').unwrap();
        assert_eq!(
            cgroup::file_handles(),
            Err("open_by_handle_at needs CAP_DAC_READ_SEARCH".to_owned())
        );
        let id: u64 = id.parse().unwrap();
        assert_eq!(
            cgroup::cgroup_path_by_id(id).unwrap().as_deref(),
            Some(path)
        );
        assert_eq!(cgroup::cgroup_path_by_id(u64::MAX).unwrap(), None);
        println!("named by the walk");
        return;
    }
    let made = Made::new();
    assert_eq!(cgroup::file_handles(), Ok(()), "the tests run as root");
    assert_eq!(
        cgroup::cgroup_path_by_id(made.id).unwrap().as_deref(),
        Some(made.path.as_str()),
        "by file handle"
    );
    let out = Command::new("setpriv")
        .args([
            "--bounding-set=-dac_read_search",
            "--inh-caps=-dac_read_search",
            "--",
        ])
        .arg(std::env::current_exe().expect("this test's path"))
        .args([
            "--exact",
            "cgroups_are_named_without_file_handles",
            "--nocapture",
        ])
        .env(CHILD, format!("{} {}", made.id, made.path))
        .output()
        .expect("running setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("named by the walk"),
        "{}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
