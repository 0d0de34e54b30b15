//! `QWEN2_QUANT_PATH` forces `best_path` (its own test binary: the choice is made once per
//! process).

use qwen2_quant::{best_path, KernelPath, PATH_ENV_VAR};

#[test]
fn env_var_forces_the_portable_path() {
    std::env::set_var(PATH_ENV_VAR, "portable");
    assert_eq!(best_path(), KernelPath::Portable);
}
