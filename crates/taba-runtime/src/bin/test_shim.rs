//! Stand-in for `taba shim ...` used by this crate's integration tests (the
//! tests cannot rely on the `taba` binary being built). Not installed or
//! shipped: the real entry points are `taba shim run` and `taba shim exec`.
//!
//! Usage:
//!   taba-runtime-test-shim shim run TASK_DIR
//!   taba-runtime-test-shim shim exec --pid PID --spec FILE
//!   taba-runtime-test-shim spawn TASK_DIR   (spawn a shim, print `Started` as JSON, exit)

use std::path::Path;
use std::process::exit;

use taba_runtime::shim;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["shim", "run", dir] => exit(shim::main_run(Path::new(dir))),
        ["shim", "exec", "--pid", pid, "--spec", spec] => {
            let Ok(pid) = pid.parse() else {
                eprintln!("error: --pid: not a number: {pid}");
                exit(2);
            };
            match shim::exec::main_exec(pid, Path::new(spec)) {
                Ok(code) => exit(code),
                Err(e) => {
                    eprintln!("error: {e}: {}", e.source_chain());
                    exit(shim::exec::EXEC_SETUP_FAILED);
                }
            }
        }
        ["spawn", dir] => {
            let exe = std::env::current_exe().expect("own executable");
            match shim::spawn(&exe, Path::new(dir)) {
                Ok(s) => println!("{}", serde_json::to_string(&s).expect("serializes")),
                Err(e) => {
                    eprintln!("error: {e}");
                    exit(1);
                }
            }
        }
        _ => {
            eprintln!("usage: shim run DIR | shim exec --pid PID --spec FILE | spawn DIR");
            exit(2);
        }
    }
}

trait SourceChain {
    fn source_chain(&self) -> String;
}

impl<E: std::error::Error> SourceChain for E {
    fn source_chain(&self) -> String {
        let mut out = Vec::new();
        let mut cur = self.source();
        while let Some(c) = cur {
            out.push(c.to_string());
            cur = c.source();
        }
        out.join(": ")
    }
}
