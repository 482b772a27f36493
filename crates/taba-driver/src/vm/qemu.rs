//! The QEMU command line of one VM, built from what the driver resolved
//! (pure: no I/O, so it is unit-tested as text), and the host's TSC
//! frequency that direct-kernel TCG boots need.

use std::path::PathBuf;
use taba_types::vm::{VmAccel, VmMachine, VmNetwork};

/// The QMP socket, relative to the task directory (QEMU runs there; a
/// relative name keeps clear of the 107-byte limit of socket paths).
pub const QMP_SOCKET: &str = "qmp.sock";

/// Translation cache of a TCG VM, MiB (QEMU's default is 1 GiB of address
/// space, which the cgroup would have to allow).
pub const TCG_TB_SIZE_MIB: u64 = 64;

/// Everything QEMU is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPlan {
    /// Shown in `ps` and QMP (`-name`).
    pub name: String,
    /// Accelerator.
    pub accel: VmAccel,
    /// Machine type.
    pub machine: VmMachine,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM, MiB.
    pub memory_mib: u64,
    /// Kernel for direct boot.
    pub kernel: Option<PathBuf>,
    /// Its initrd.
    pub initrd: Option<PathBuf>,
    /// The whole kernel command line.
    pub cmdline: String,
    /// The VM's disk files (qcow2), in order; the first boots a firmware boot.
    pub disks: Vec<PathBuf>,
    /// Network.
    pub network: VmNetwork,
    /// `-incoming URI`: wait for a migration instead of booting.
    pub incoming: Option<String>,
    /// `-S`: do not run the vCPUs until QMP `cont`.
    pub paused: bool,
    /// UEFI firmware (OVMF) of a boot-disk VM; `None`: SeaBIOS or a kernel.
    pub uefi: Option<super::boot::Uefi>,
    /// The cloud-init seed disk (raw, attached read-only after the disks).
    pub seed: Option<PathBuf>,
}

/// The kernel command line: `console=ttyS0`, the task's, and for a TCG
/// boot `tsc_early_khz=<host kHz>` (about one TCG boot in ten hangs
/// calibrating the TSC without it) unless the task sets one itself.
pub fn kernel_cmdline(task: Option<&str>, accel: VmAccel, host_khz: Option<u64>) -> String {
    let mut c = String::from("console=ttyS0");
    if let Some(t) = task.map(str::trim).filter(|t| !t.is_empty()) {
        c.push(' ');
        c.push_str(t);
    }
    if accel == VmAccel::Tcg
        && !c
            .split_whitespace()
            .any(|w| w.starts_with("tsc_early_khz="))
    {
        if let Some(khz) = host_khz {
            c.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    c
}

impl VmPlan {
    /// QEMU's arguments (without the program).
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |v: &[&str]| a.extend(v.iter().map(|s| s.to_string()));
        push(&["-name", &format!("{},debug-threads=on", self.name)]);
        match self.accel {
            VmAccel::Tcg => push(&[
                "-accel",
                &format!("tcg,tb-size={TCG_TB_SIZE_MIB}"),
                "-cpu",
                "max",
            ]),
            VmAccel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        }
        push(&["-machine", self.machine.qemu_name()]);
        push(&["-smp", &self.vcpus.to_string()]);
        push(&["-m", &format!("{}M", self.memory_mib)]);
        push(&["-nodefaults", "-no-user-config", "-display", "none"]);
        // No new privileges, no spawning, no raw syscalls beyond a VM's.
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
        // The serial console is QEMU's stdout: the task shim's log.
        push(&[
            "-chardev",
            "stdio,id=con0,signal=off",
            "-serial",
            "chardev:con0",
        ]);
        push(&["-qmp", &format!("unix:{QMP_SOCKET},server=on,wait=off")]);
        if let Some(k) = &self.kernel {
            push(&["-kernel", &k.to_string_lossy()]);
            if let Some(i) = &self.initrd {
                push(&["-initrd", &i.to_string_lossy()]);
            }
            push(&["-append", &self.cmdline]);
        }
        if let Some(u) = &self.uefi {
            push(&[
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    u.code.to_string_lossy().replace(',', ",,")
                ),
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    u.vars.to_string_lossy().replace(',', ",,")
                ),
            ]);
        }
        let bus = match self.machine {
            VmMachine::Microvm => "device",
            VmMachine::Q35 => "pci",
        };
        for (i, d) in self.disks.iter().enumerate() {
            push(&[
                "-blockdev",
                &format!(
                    "driver=file,filename={},node-name=file{i},cache.direct=off",
                    d.to_string_lossy().replace(',', ",,")
                ),
            ]);
            push(&[
                "-blockdev",
                &format!("driver=qcow2,file=file{i},node-name=disk{i}"),
            ]);
            let boot = if i == 0 && self.kernel.is_none() {
                ",bootindex=0"
            } else {
                ""
            };
            push(&[
                "-device",
                &format!("virtio-blk-{bus},drive=disk{i},id=vd{i}{boot}"),
            ]);
        }
        if let Some(seed) = &self.seed {
            push(&[
                "-blockdev",
                &format!(
                    "driver=file,filename={},node-name=seedfile,read-only=on",
                    seed.to_string_lossy().replace(',', ",,")
                ),
                "-blockdev",
                "driver=raw,file=seedfile,node-name=seed,read-only=on",
                "-device",
                &format!("virtio-blk-{bus},drive=seed,id=seed0"),
            ]);
        }
        if self.network == VmNetwork::User {
            push(&[
                "-netdev",
                "user,id=net0",
                "-device",
                &format!("virtio-net-{bus},netdev=net0,id=nic0"),
            ]);
        }
        if let Some(uri) = &self.incoming {
            push(&["-incoming", uri]);
        }
        if self.paused {
            push(&["-S"]);
        }
        a
    }
}

/// The host's TSC (or CPU) frequency in kHz: sysfs's `tsc_freq_khz` where
/// the kernel exports it, else the first `cpu MHz` of /proc/cpuinfo.
pub fn host_khz() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
        if let Ok(v) = s.trim().parse::<u64>() {
            return Some(v);
        }
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo_khz(&info)
}

/// The first `cpu MHz : 2596.144` of a /proc/cpuinfo text, in kHz.
pub fn cpuinfo_khz(info: &str) -> Option<u64> {
    let line = info.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then_some((mhz * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> VmPlan {
        VmPlan {
            name: "taba-web".into(),
            accel: VmAccel::Tcg,
            machine: VmMachine::Microvm,
            vcpus: 2,
            memory_mib: 256,
            kernel: Some("/img/vmlinuz".into()),
            initrd: Some("/img/initrd".into()),
            cmdline: kernel_cmdline(Some("quiet"), VmAccel::Tcg, Some(2_596_144)),
            disks: vec!["/a/disk0.qcow2".into()],
            network: VmNetwork::User,
            incoming: None,
            paused: false,
            uefi: None,
            seed: None,
        }
    }

    #[test]
    fn tcg_direct_boots_get_the_host_tsc_frequency() {
        assert_eq!(
            kernel_cmdline(Some("quiet"), VmAccel::Tcg, Some(2_596_144)),
            "console=ttyS0 quiet tsc_early_khz=2596144"
        );
        assert_eq!(
            kernel_cmdline(Some("tsc_early_khz=1000"), VmAccel::Tcg, Some(5)),
            "console=ttyS0 tsc_early_khz=1000"
        );
        assert_eq!(kernel_cmdline(None, VmAccel::Kvm, Some(5)), "console=ttyS0");
        assert_eq!(
            cpuinfo_khz("processor\t: 0\ncpu MHz\t\t: 2596.144\n"),
            Some(2_596_144)
        );
        assert_eq!(cpuinfo_khz("processor: 0\n"), None);
    }

    #[test]
    fn command_line_of_a_microvm() {
        let a = plan().args().join(" ");
        for want in [
            "-accel tcg,tb-size=64 -cpu max",
            "-machine microvm",
            "-smp 2 -m 256M",
            "-nodefaults",
            "-chardev stdio,id=con0,signal=off -serial chardev:con0",
            "-qmp unix:qmp.sock,server=on,wait=off",
            "-kernel /img/vmlinuz -initrd /img/initrd -append console=ttyS0 quiet tsc_early_khz=2596144",
            "-blockdev driver=file,filename=/a/disk0.qcow2,node-name=file0",
            "-device virtio-blk-device,drive=disk0,id=vd0 ",
            "-netdev user,id=net0 -device virtio-net-device,netdev=net0",
        ] {
            assert!(a.contains(want), "{want:?} not in {a}");
        }
        assert!(!a.contains("-incoming"));
    }

    #[test]
    fn firmware_boot_on_q35_boots_the_first_disk() {
        let mut p = plan();
        p.machine = VmMachine::Q35;
        p.kernel = None;
        p.accel = VmAccel::Kvm;
        p.network = VmNetwork::None;
        p.disks.push("/a/b,c.qcow2".into());
        p.incoming = Some("tcp:10.0.0.2:4444".into());
        let a = p.args().join(" ");
        assert!(a.contains("-accel kvm -cpu host"), "{a}");
        assert!(
            a.contains("virtio-blk-pci,drive=disk0,id=vd0,bootindex=0"),
            "{a}"
        );
        assert!(a.contains("virtio-blk-pci,drive=disk1,id=vd1 "), "{a}");
        assert!(a.contains("filename=/a/b,,c.qcow2"), "{a}");
        assert!(!a.contains("-kernel") && !a.contains("-netdev"), "{a}");
        assert!(a.ends_with("-incoming tcp:10.0.0.2:4444"), "{a}");
        assert!(!a.contains("pflash") && !a.contains("seed"), "{a}");
    }

    #[test]
    fn uefi_firmware_and_a_read_only_seed_disk() {
        let mut p = plan();
        p.machine = VmMachine::Q35;
        p.kernel = None;
        p.uefi = Some(super::super::boot::Uefi {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/t/efivars.fd".into(),
        });
        p.seed = Some("/t/seed.img".into());
        let a = p.args().join(" ");
        assert!(
            a.contains("-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd -drive if=pflash,format=raw,unit=1,file=/t/efivars.fd"),
            "{a}"
        );
        assert!(
            a.contains("driver=file,filename=/t/seed.img,node-name=seedfile,read-only=on -blockdev driver=raw,file=seedfile,node-name=seed,read-only=on -device virtio-blk-pci,drive=seed,id=seed0"),
            "{a}"
        );
        // The seed comes after the disks: disk0 stays the first (boot) disk.
        assert!(a.find("drive=disk0").unwrap() < a.find("drive=seed").unwrap());
    }
}
