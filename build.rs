//! Under the `cuda` feature, compiles `kernels/*.cu` to PTX with nvcc; the ops embed the PTX.
//! Build-time compilation needs no NVRTC at run time, and a kernel that no longer compiles
//! fails the build (and CI) instead of the first request on a GPU.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        cuda::compile_kernels();
    }
}

mod cuda {
    use std::path::PathBuf;
    use std::process::Command;

    pub fn compile_kernels() {
        let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
        let cap = cap.trim().trim_end_matches(['a', 'f']).replace('.', "");
        println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
        println!("cargo:rerun-if-env-changed=NVCC");
        let nvcc = std::env::var("NVCC")
            .ok()
            .or_else(|| {
                std::env::var("CUDA_HOME")
                    .ok()
                    .map(|h| format!("{h}/bin/nvcc"))
                    .filter(|p| std::path::Path::new(p).exists())
            })
            .unwrap_or_else(|| "nvcc".into());
        let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
            .expect("kernels/ folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "cu"))
            .collect();
        sources.sort();
        for src in sources {
            let stem = src
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("kernel name");
            let ptx = out_dir.join(format!("{stem}.ptx"));
            let status = Command::new(&nvcc)
                .args(["--ptx", "-O3"])
                .arg(format!("-arch=compute_{cap}"))
                .arg(&src)
                .arg("-o")
                .arg(&ptx)
                .status()
                .unwrap_or_else(|e| panic!("cannot run {nvcc}: {e} (see docs/cuda.md)"));
            assert!(status.success(), "nvcc failed on {}", src.display());
        }
    }
}
