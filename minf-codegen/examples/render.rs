//! Prints the rendered source of a default spec: `render <pattern> <dtype> <head_dim> <arch>`, or
//! writes every default spec and every index kernel of an arch into a folder:
//! `render --all <arch> <dir>`, or the listed
//! specs: `render --specs 'dense,bf16,128,128,64,4,2,sm_90a[,wgmma];...' <dir>` (`<kernel>.cu`
//! plus `<kernel>.json` with the spec and launch shape), for inspecting or compiling by hand.
use minf_codegen::{render, render_index, Arch, DType, IndexKernel, IndexKernelSpec, KernelSpec, Pattern};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, arch, dir] if flag == "--all" => {
            std::fs::create_dir_all(dir)?;
            let arch = arch.parse::<Arch>()?;
            for spec in KernelSpec::default_set(&[arch]) {
                write_kernel(&spec, dir)?;
            }
            for &kernel in IndexKernel::ALL {
                let spec = IndexKernelSpec { kernel, arch };
                let rendered = render_index(&spec)?;
                let path = std::path::Path::new(dir).join(format!("{}_{}", rendered.kernel_name, arch.short()));
                std::fs::write(path.with_extension("cu"), &rendered.source)?;
                let meta = serde_json::json!({ "kernel_name": rendered.kernel_name, "spec": spec, "launch": rendered.entries });
                std::fs::write(path.with_extension("json"), meta.to_string())?;
            }
            Ok(())
        }
        [flag, list, dir] if flag == "--specs" => {
            // `pattern,dtype,head_dim,block_m,block_n,warps,stages,arch;...`
            std::fs::create_dir_all(dir)?;
            for item in list.split(';') {
                let f: Vec<&str> = item.split(',').collect();
                let (fields, mainloop) = match f.as_slice() {
                    [rest @ .., m] if f.len() == 9 => (rest, m.parse()?),
                    rest => (rest, minf_codegen::Mainloop::MmaSync),
                };
                let [pattern, dtype, d, bm, bn, w, st, arch] = fields else {
                    return Err(format!("bad spec `{item}`").into());
                };
                let spec = KernelSpec {
                    pattern: pattern.parse()?,
                    dtype: dtype.parse()?,
                    head_dim: d.parse()?,
                    block_m: bm.parse()?,
                    block_n: bn.parse()?,
                    warps: w.parse()?,
                    stages: st.parse()?,
                    arch: arch.parse()?,
                    mainloop,
                };
                write_kernel(&spec, dir)?;
            }
            Ok(())
        }
        [pattern, dtype, head_dim, arch] => {
            let spec = KernelSpec::default_for(
                pattern.parse::<Pattern>()?,
                dtype.parse::<DType>()?,
                head_dim.parse()?,
                arch.parse::<Arch>()?,
            );
            print!("{}", render(&spec)?.source);
            Ok(())
        }
        _ => Err("usage: render <pattern> <dtype> <head_dim> <arch> | render --all <arch> <dir>".into()),
    }
}

fn write_kernel(spec: &KernelSpec, dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    let kernel = render(spec)?;
    let path = std::path::Path::new(dir).join(format!("{}_{}", kernel.kernel_name, spec.arch.short()));
    std::fs::write(path.with_extension("cu"), &kernel.source)?;
    let meta = serde_json::json!({ "kernel_name": kernel.kernel_name, "spec": spec, "launch": kernel.entries });
    std::fs::write(path.with_extension("json"), meta.to_string())?;
    Ok(())
}
