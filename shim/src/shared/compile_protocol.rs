//! How an instance has untrusted wasm compiled: it runs
//! `containerd-shim-wasmlet-v1 compile module|component`, writes the wasm
//! (at most `MAX_WASM_BYTES`) to its stdin and closes it, and reads the
//! compiled code from its stdout. The compiler is started as
//! `COMPILER_USER` with no capability and no_new_privs. Exit 0 is success; `INVALID` means the
//! wasm was refused, and stderr says why.

use super::launch_plan::UserPlan;

/// The shim binary's subcommand that compiles.
pub const COMPILE_COMMAND: &str = "compile";
/// The exit code of wasm that cannot be compiled (invalid, too large).
pub const INVALID: i32 = 65;
/// How much of the compiler's stderr the instance keeps.
pub const MAX_MESSAGE_BYTES: usize = 16 << 10;
/// Who compiles: nobody, with no supplementary group.
pub const COMPILER_USER: UserPlan = UserPlan { uid: 65534, gid: 65534, additional_gids: Vec::new() };
