//! The attacker of the isolation tests: copied into a container's root
//! filesystem (with the shared libraries it needs), it tries one escape per
//! run and prints one line saying how it went, so a test can assert the
//! exact failure. Not installed or shipped.
//!
//! Output: `ok <detail>` when the attempt worked (exit 0), `err <ERRNO>` when
//! the kernel refused it (exit 1), `usage ...` on bad arguments (exit 2).
//!
//! Usage (one attempt per run):
//!   open PATH r|w                 open a file (device node, /proc file, cgroup file) and read or write a byte
//!   mknod-open PATH b|c MAJ MIN   make a device node, then open it for reading
//!   mount                         mount a tmpfs on /mnt
//!   ptrace PID                    PTRACE_ATTACH to a process
//!   io-uring                      io_uring_setup
//!   bpf | keyctl | perf | userfaultfd | init-module | unshare-user | unshare-mnt | clone-user
//!                                 the raw system call, with harmless arguments
//!   ids                           print `ok uid=U euid=E` (for setuid binaries)
//!   setuid0                       setuid(0), then print the ids
//!   fds                           list the fds above 2, and try to read `..` through each
//!   read PATH                     read a file, print its first line
//!   connect HOST:PORT             open a TCP connection
//!   sleep SECS                    sleep (to be a target)

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::Read;
use std::process::exit;

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ELOOP => "ELOOP",
        libc::EXDEV => "EXDEV",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("errno{e}"),
    };
    name.to_string()
}

fn fail(e: std::io::Error) -> ! {
    println!("err {}", errno_name(e.raw_os_error().unwrap_or(0)));
    exit(1)
}

fn check(rc: libc::c_long) -> libc::c_long {
    if rc < 0 {
        fail(std::io::Error::last_os_error())
    }
    rc
}

fn usage() -> ! {
    println!("usage: see the module doc of test_attack.rs");
    exit(2)
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| usage())
}

fn open_rw(path: &str, mode: &str) {
    let flags = if mode == "w" {
        libc::O_WRONLY
    } else {
        libc::O_RDONLY
    };
    let p = cstr(path);
    // SAFETY: a valid C string path.
    let fd = check(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) } as _) as i32;
    let mut b = [0u8; 1];
    let n = if mode == "w" {
        b[0] = b'0';
        // SAFETY: writing from a one-byte buffer.
        unsafe { libc::write(fd, b.as_ptr().cast(), 1) }
    } else {
        // SAFETY: reading into a one-byte buffer.
        unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) }
    };
    check(n as _);
    println!("ok {mode} {n}");
}

fn raw_syscall(name: &str) {
    // SAFETY: each call passes only integers or NULL pointers; the kernel
    // validates them (and the filter decides before it does).
    let rc = unsafe {
        match name {
            "io-uring" => {
                let mut params = [0u8; 120];
                libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr())
            }
            "bpf" => libc::syscall(libc::SYS_bpf, 0, 0, 0),
            "keyctl" => libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0),
            "perf" => libc::syscall(libc::SYS_perf_event_open, 0, 0, -1, -1, 0),
            "userfaultfd" => libc::syscall(libc::SYS_userfaultfd, 0),
            "init-module" => libc::syscall(libc::SYS_init_module, 0, 0, 0),
            "unshare-user" => libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER),
            "unshare-mnt" => libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS),
            "clone-user" => {
                let pid = libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
                    0,
                    0,
                    0,
                    0,
                );
                if pid == 0 {
                    libc::_exit(0);
                }
                pid
            }
            _ => usage(),
        }
    };
    check(rc);
    println!("ok {rc}");
}

fn ids() -> String {
    // SAFETY: getters without arguments.
    let (u, e) = unsafe { (libc::getuid(), libc::geteuid()) };
    format!("uid={u} euid={e}")
}

fn fds() {
    let mut out = Vec::new();
    let entries = std::fs::read_dir("/proc/self/fd").unwrap_or_else(|e| fail(e));
    let fds: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // The read_dir above holds one fd of its own, closed by now.
        if target.is_empty() {
            continue;
        }
        let through = std::fs::read_dir(format!("/proc/self/fd/{fd}/"))
            .map(|rd| rd.count().to_string())
            .unwrap_or_else(|e| e.to_string());
        out.push(format!("{fd}={target}:{through}"));
    }
    println!("ok fds [{}]", out.join(" "));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["open", path, mode @ ("r" | "w")] => open_rw(path, mode),
        ["mknod-open", path, kind @ ("b" | "c"), major, minor] => {
            let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
                usage()
            };
            let t = if *kind == "b" {
                libc::S_IFBLK
            } else {
                libc::S_IFCHR
            };
            let p = cstr(path);
            // SAFETY: a valid C string path.
            check(unsafe { libc::mknod(p.as_ptr(), t | 0o600, libc::makedev(major, minor)) } as _);
            open_rw(path, "r");
        }
        ["mount"] => {
            let (src, dst) = (cstr("tmpfs"), cstr("/mnt"));
            // SAFETY: valid C strings; no data.
            check(unsafe {
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    src.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            } as _);
            println!("ok mounted");
        }
        ["ptrace", pid] => {
            let Ok(pid) = pid.parse::<libc::pid_t>() else {
                usage()
            };
            // SAFETY: PTRACE_ATTACH with integer arguments.
            check(unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) });
            println!("ok attached");
        }
        [name] if !["ids", "setuid0", "fds"].contains(name) => raw_syscall(name),
        ["ids"] => println!("ok {}", ids()),
        ["setuid0"] => {
            // SAFETY: setuid with an integer.
            check(unsafe { libc::setuid(0) } as _);
            println!("ok {}", ids());
        }
        ["fds"] => fds(),
        ["read", path] => {
            let mut s = String::new();
            match std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut s)) {
                Ok(_) => println!("ok {}", s.lines().next().unwrap_or("")),
                Err(e) => fail(e),
            }
        }
        ["connect", addr] => match std::net::TcpStream::connect(addr) {
            Ok(_) => println!("ok connected"),
            Err(e) => fail(e),
        },
        ["sleep", secs] => {
            std::thread::sleep(std::time::Duration::from_secs(secs.parse().unwrap_or(60)));
            println!("ok slept");
        }
        _ => usage(),
    }
    exit(0)
}
