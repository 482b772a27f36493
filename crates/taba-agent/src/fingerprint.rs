//! Host fingerprint: what this node is and has. Read from /proc, /sys,
//! statvfs and uname; turned into node attributes that constraints use
//! (`${attr.kernel.version}`, `${attr.cpu.cores}`, ...).

use std::collections::BTreeMap;
use std::path::Path;
use taba_types::{ByteSize, NodeResources};

/// What the fingerprint found.
#[derive(Clone, Debug, Default)]
pub struct Fingerprint {
    /// Capacity.
    pub resources: NodeResources,
    /// MHz of one core.
    pub mhz_per_core: u64,
    /// Attributes for constraints.
    pub attributes: BTreeMap<String, String>,
    /// Host name.
    pub hostname: String,
    /// Why cgroups are not usable here, if they are not.
    pub cgroup_error: Option<String>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// (cores, MHz per core, model) from /proc/cpuinfo.
fn cpu() -> (u32, u64, String) {
    let info = read("/proc/cpuinfo");
    let mut cores = 0u32;
    let mut mhz = 0f64;
    let mut model = String::new();
    for line in info.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => cores += 1,
            "cpu MHz" if mhz == 0.0 => mhz = v.trim().parse().unwrap_or(0.0),
            "model name" if model.is_empty() => model = v.trim().to_string(),
            _ => {}
        }
    }
    // The cpuset of this process may be smaller than the machine.
    let avail = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(cores.max(1));
    let cores = if cores == 0 { avail } else { cores.min(avail) };
    let mhz = if mhz > 0.0 { mhz as u64 } else { 1000 };
    (cores, mhz, model)
}

fn mem_total() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn disk_free(path: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    let mut st: libc::statvfs = unsafe_zeroed_statvfs();
    #[allow(unsafe_code)]
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return 0;
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    free
}

fn unsafe_zeroed_statvfs() -> libc::statvfs {
    #[allow(unsafe_code)]
    // SAFETY: statvfs is a plain C struct of integers; all-zero is a valid value.
    unsafe {
        std::mem::zeroed()
    }
}

fn os_release() -> (String, String) {
    let s = read("/etc/os-release");
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (get("ID"), get("VERSION_ID"))
}

/// What /dev/kvm answers: (present, API version, KVM_CREATE_VM works).
/// Whether a guest really boots on it is the VM driver's probe: on some hosts
/// (a paravirtual `kvm_pvm` module, for one) VMs can be created but a Linux
/// guest never boots.
fn kvm_probe() -> (bool, Option<i32>, bool) {
    use std::os::fd::AsRawFd;
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return (Path::new("/dev/kvm").exists(), None, false);
    };
    #[allow(unsafe_code)]
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    let api = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if api < 0 {
        return (true, None, false);
    }
    #[allow(unsafe_code)]
    // SAFETY: KVM_CREATE_VM with machine type 0 returns a new fd or -1.
    let vm = unsafe { libc::ioctl(f.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm >= 0 {
        #[allow(unsafe_code)]
        // SAFETY: `vm` is a file descriptor we own and close once.
        unsafe {
            libc::close(vm);
        }
    }
    (true, Some(api), vm >= 0)
}

/// Fingerprint this host; `data_dir` is where allocations will live (disk).
pub fn fingerprint(data_dir: &Path) -> Fingerprint {
    let (cores, mhz, model) = cpu();
    let memory = mem_total();
    let disk = disk_free(data_dir);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let hostname = read("/proc/sys/kernel/hostname").trim().to_string();
    let (os, os_version) = os_release();
    let mut a = BTreeMap::new();
    a.insert("kernel.name".into(), "linux".into());
    a.insert("kernel.version".into(), kernel);
    a.insert("os.name".into(), os);
    a.insert("os.version".into(), os_version);
    a.insert("cpu.arch".into(), std::env::consts::ARCH.into());
    a.insert("cpu.cores".into(), cores.to_string());
    a.insert("cpu.mhz".into(), mhz.to_string());
    a.insert("cpu.model".into(), model);
    a.insert("cpu.total_mhz".into(), (cores as u64 * mhz).to_string());
    a.insert("memory.total".into(), memory.to_string());
    a.insert("unique.hostname".into(), hostname.clone());
    let (kvm, kvm_api, kvm_vm) = kvm_probe();
    a.insert("kvm.present".into(), kvm.to_string());
    if let Some(v) = kvm_api {
        a.insert("kvm.api_version".into(), v.to_string());
    }
    a.insert("kvm.create_vm".into(), kvm_vm.to_string());
    let cgroup_error = match taba_cgroups::Layout::detect() {
        Ok(l) => {
            a.insert("cgroup.version".into(), l.version_name().to_string());
            None
        }
        Err(e) => {
            a.insert("cgroup.version".into(), "none".into());
            Some(taba_types::error_chain(&e))
        }
    };
    Fingerprint {
        cgroup_error,
        resources: NodeResources {
            cores,
            cpu: cores as u64 * mhz,
            memory: ByteSize(memory),
            disk: ByteSize(disk),
        },
        mhz_per_core: mhz,
        attributes: a,
        hostname,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_this_host() {
        let f = fingerprint(Path::new("/tmp"));
        assert!(f.resources.cores >= 1);
        assert!(f.resources.memory.0 > 64 << 20);
        assert!(f.resources.cpu >= f.resources.cores as u64);
        assert!(f.attributes["kernel.version"]
            .chars()
            .next()
            .unwrap()
            .is_ascii_digit());
        assert!(!f.hostname.is_empty());
    }
}
