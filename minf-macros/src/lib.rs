//! The `#[sparse_attention]` attribute macro of minf.
//!
//! ```ignore
//! #[minf::sparse_attention(pattern = "dense", head_dim = 128, dtype = "bf16", block_n = 64)]
//! struct PrefillAttention;
//! ```
//!
//! The attribute checks the kernel's spec at compile time with the same rules the runtime uses
//! ([`minf_codegen::KernelSpec::validate`]), implements `minf::SparseAttentionKernel` for the
//! struct and registers the kernel so `minf::warm_registered` can compile it ahead of time.
//!
//! Without `arch`, the spec is checked for the default warm targets `sm_80` and `sm_90a`; a device
//! with less shared memory (`sm_86`, `sm_89`) is checked again at run time.

use darling::ast::NestedMeta;
use darling::util::SpannedValue;
use darling::FromMeta;
use minf_codegen::spec::{BLOCK_MS, BLOCK_NS, HEAD_DIMS, STAGES, WARPS};
use minf_codegen::{Arch, DType, KernelSpec, Mainloop, Pattern, SpecError};
use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ext::IdentExt;

/// Declares a sparse-attention kernel: `#[sparse_attention(pattern = "dense", head_dim = 128)]` on
/// a struct.
///
/// Arguments: `pattern` and `head_dim` (required); `dtype` (default `"bf16"`); `block_m`,
/// `block_n`, `warps`, `stages` (default: `KernelSpec::default_for` of the pattern, dtype, head
/// dimension and target); `arch` (pins the target; without it the device's architecture is used
/// at run time); `mainloop` (`"mma_sync"`, or on `sm_90a` `"wgmma"`, `"wgmma_tma"`,
/// `"wgmma_tma_pingpong"`, `"wgmma_tma_overlap"`; default: the target's engine where the tile suits
/// it, else `"mma_sync"`). Invalid combinations are compile errors that point at the offending
/// argument (docs/macro.md).
#[proc_macro_attribute]
pub fn sparse_attention(args: proc_macro::TokenStream, item: proc_macro::TokenStream) -> proc_macro::TokenStream {
    expand(args.into(), item.into()).into()
}

/// The architectures a kernel without `arch` is checked for at compile time.
const DEFAULT_TARGETS: [Arch; 2] = [Arch::Sm80, Arch::Sm90a];

/// The attribute's arguments as written, each with the span of its value.
#[derive(Debug, FromMeta)]
struct Args {
    pattern: Option<SpannedValue<String>>,
    head_dim: Option<SpannedValue<IntegerArg>>,
    dtype: Option<SpannedValue<String>>,
    block_m: Option<SpannedValue<IntegerArg>>,
    block_n: Option<SpannedValue<IntegerArg>>,
    warps: Option<SpannedValue<IntegerArg>>,
    stages: Option<SpannedValue<IntegerArg>>,
    arch: Option<SpannedValue<String>>,
    mainloop: Option<SpannedValue<String>>,
}

/// An integer argument as written: an integer literal, negative ones included, so that `-64` gets
/// the same "allowed ..." message as any other unsupported value. A string such as `"128"` is
/// refused: darling's own integer parsing would accept it.
#[derive(Debug, Clone, Copy)]
struct IntegerArg(i64);

impl FromMeta for IntegerArg {
    fn from_expr(expr: &syn::Expr) -> darling::Result<Self> {
        let literal = |lit: &syn::Lit| match lit {
            syn::Lit::Int(int) => int.base10_parse::<i64>().map_err(darling::Error::from),
            _ => Err(darling::Error::custom("expected an integer literal, e.g. `head_dim = 128`").with_span(lit)),
        };
        match expr {
            syn::Expr::Lit(lit) => literal(&lit.lit).map(IntegerArg),
            syn::Expr::Unary(syn::ExprUnary { op: syn::UnOp::Neg(_), expr: inner, .. }) => match inner.as_ref() {
                syn::Expr::Lit(lit) => literal(&lit.lit).map(|value| IntegerArg(-value)),
                _ => Err(darling::Error::unexpected_expr_type(expr)),
            },
            syn::Expr::Group(group) => Self::from_expr(&group.expr),
            _ => Err(darling::Error::unexpected_expr_type(expr)),
        }
        .map_err(|err| err.with_span(expr))
    }
}

/// A kernel declaration whose names have been parsed: what the generated code encodes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kernel {
    pattern: Pattern,
    dtype: DType,
    head_dim: u32,
    block_m: Option<u32>,
    block_n: Option<u32>,
    warps: Option<u32>,
    stages: Option<u32>,
    arch: Option<Arch>,
    mainloop: Option<Mainloop>,
}

impl Kernel {
    /// The spec for target `arch` (ignored when the kernel pins its own): defaults for the
    /// pattern, dtype, head dimension and target, overridden by the explicit tile arguments.
    fn spec(&self, arch: Arch) -> KernelSpec {
        let arch = self.arch.unwrap_or(arch);
        let defaults = KernelSpec::default_for(self.pattern, self.dtype, self.head_dim, arch);
        let tile = (
            self.block_m.unwrap_or(defaults.block_m),
            self.block_n.unwrap_or(defaults.block_n),
            self.warps.unwrap_or(defaults.warps),
            self.stages.unwrap_or(defaults.stages),
        );
        defaults.retiled(tile, self.mainloop)
    }

    /// The targets checked at compile time: the pinned one, else [`DEFAULT_TARGETS`].
    fn targets(&self) -> Vec<Arch> {
        self.arch.map_or_else(|| DEFAULT_TARGETS.to_vec(), |arch| vec![arch])
    }
}

impl Args {
    /// Parses the names (pattern, dtype, arch) and integers; every error points at its argument.
    fn kernel(&self) -> Result<Kernel, syn::Error> {
        let mut errors = Errors::default();
        let pattern = match &self.pattern {
            Some(pattern) => errors.parse::<Pattern>(pattern),
            None => {
                let implemented: Vec<&str> = Pattern::ALL.iter().map(|p| p.as_str()).collect();
                errors.push(syn::Error::new(
                    Span::call_site(),
                    format!(
                        "missing argument `pattern`: add e.g. `pattern = \"dense\"` (implemented patterns: {})",
                        implemented.join(", ")
                    ),
                ));
                None
            }
        };
        let head_dim = match &self.head_dim {
            Some(head_dim) => errors.integer("head_dim", head_dim, HEAD_DIMS),
            None => {
                let allowed: Vec<String> = HEAD_DIMS.iter().map(u32::to_string).collect();
                errors.push(syn::Error::new(
                    Span::call_site(),
                    format!("missing argument `head_dim`: add e.g. `head_dim = 128` (allowed: {})", allowed.join(", ")),
                ));
                None
            }
        };
        let dtype = match &self.dtype {
            Some(dtype) => errors.parse::<DType>(dtype),
            None => Some(DType::Bf16),
        };
        let arch = match &self.arch {
            Some(arch) => errors.parse::<Arch>(arch).map(Some),
            None => Some(None),
        };
        let mainloop = match &self.mainloop {
            Some(mainloop) => errors.parse::<Mainloop>(mainloop).map(Some),
            None => Some(None),
        };
        let block_m = errors.optional_integer("block_m", &self.block_m, BLOCK_MS);
        let block_n = errors.optional_integer("block_n", &self.block_n, BLOCK_NS);
        let warps = errors.optional_integer("warps", &self.warps, WARPS);
        let stages = errors.optional_integer("stages", &self.stages, STAGES);
        errors.finish()?;
        match (pattern, head_dim, dtype, arch, block_m, block_n, warps, stages, mainloop) {
            (
                Some(pattern),
                Some(head_dim),
                Some(dtype),
                Some(arch),
                Some(block_m),
                Some(block_n),
                Some(warps),
                Some(stages),
                Some(mainloop),
            ) => Ok(Kernel { pattern, dtype, head_dim, block_m, block_n, warps, stages, arch, mainloop }),
            _ => Err(syn::Error::new(Span::call_site(), "invalid #[sparse_attention] arguments")),
        }
    }

    /// The span of the explicit argument `field`, if it was given.
    fn span_of(&self, field: &str) -> Option<Span> {
        match field {
            "pattern" => self.pattern.as_ref().map(SpannedValue::span),
            "head_dim" => self.head_dim.as_ref().map(SpannedValue::span),
            "dtype" => self.dtype.as_ref().map(SpannedValue::span),
            "block_m" => self.block_m.as_ref().map(SpannedValue::span),
            "block_n" => self.block_n.as_ref().map(SpannedValue::span),
            "warps" => self.warps.as_ref().map(SpannedValue::span),
            "stages" => self.stages.as_ref().map(SpannedValue::span),
            "arch" => self.arch.as_ref().map(SpannedValue::span),
            "mainloop" => self.mainloop.as_ref().map(SpannedValue::span),
            _ => None,
        }
    }

    /// The first of `fields` that was given explicitly, else `head_dim` (which chose the
    /// defaults).
    fn first_explicit(&self, fields: &[&str]) -> Span {
        fields.iter().chain(&["head_dim"]).find_map(|f| self.span_of(f)).unwrap_or_else(Span::call_site)
    }

    /// Where a validation error belongs: the argument it concerns, or the explicit argument that
    /// made a defaulted one invalid.
    fn span_for(&self, error: &SpecError) -> Span {
        match error {
            SpecError::Invalid { field: "warps", .. } => self.first_explicit(&["warps", "block_m"]),
            SpecError::Invalid { field, .. } => self.first_explicit(&[field]),
            SpecError::SharedMemory { .. } => self.first_explicit(&["block_n", "stages", "block_m"]),
            SpecError::Registers { .. } => self.first_explicit(&["block_n", "warps", "block_m"]),
            SpecError::Unknown { field, .. } => self.first_explicit(&[field]),
        }
    }
}

/// Compile errors collected so that all of them are reported at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn parse<T: std::str::FromStr<Err = SpecError>>(&mut self, value: &SpannedValue<String>) -> Option<T> {
        match value.parse::<T>() {
            Ok(parsed) => Some(parsed),
            Err(err) => {
                self.push(syn::Error::new(value.span(), err));
                None
            }
        }
    }

    /// A `u32` argument; a value outside `u32` gets the message of [`SpecError::Invalid`].
    fn integer(&mut self, field: &'static str, value: &SpannedValue<IntegerArg>, allowed: &[u32]) -> Option<u32> {
        match u32::try_from(value.0) {
            Ok(value) => Some(value),
            Err(_) => {
                let allowed = allowed.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
                let error = SpecError::Invalid { field, value: value.0.to_string(), allowed };
                self.push(syn::Error::new(value.span(), error));
                None
            }
        }
    }

    /// An optional `u32` argument: `Some(None)` when absent, `None` on error.
    fn optional_integer(
        &mut self,
        field: &'static str,
        value: &Option<SpannedValue<IntegerArg>>,
        allowed: &[u32],
    ) -> Option<Option<u32>> {
        match value {
            Some(value) => self.integer(field, value, allowed).map(Some),
            None => Some(None),
        }
    }

    fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Validates the kernel for every compile-time target; on failure, the error of the first target
/// that rejects it, pointing at the argument concerned.
fn validate(args: &Args, kernel: &Kernel) -> Result<(), syn::Error> {
    let targets = kernel.targets();
    let Some((arch, error)) = targets.iter().find_map(|&arch| kernel.spec(arch).validate().err().map(|e| (arch, e)))
    else {
        return Ok(());
    };
    let mut message = error.to_string();
    if let SpecError::Invalid { field, value, .. } = &error {
        if args.span_of(field).is_none() {
            message.push_str(&format!(" (`{field}` was not given and defaults to {value} here; set it explicitly)"));
        }
    }
    if kernel.arch.is_none() && matches!(error, SpecError::SharedMemory { .. }) {
        let fits: Vec<String> = targets
            .iter()
            .filter(|&&a| a != arch && kernel.spec(a).validate().is_ok())
            .map(|a| a.to_string())
            .collect();
        message.push_str(&format!(
            "; without `arch`, kernels are checked for {}",
            DEFAULT_TARGETS.map(|a| a.to_string()).join(" and ")
        ));
        if let Some(fit) = fits.first() {
            message.push_str(&format!(" (it fits {fit}: add `arch = \"{fit}\"` to target only that)"));
        }
    }
    Err(syn::Error::new(args.span_for(&error), message))
}

/// The struct the attribute is on, or an error at the item.
fn kernel_struct(item: &syn::Item) -> Result<&syn::ItemStruct, syn::Error> {
    match item {
        syn::Item::Struct(s) if s.generics.params.is_empty() && s.generics.where_clause.is_none() => Ok(s),
        syn::Item::Struct(s) => Err(syn::Error::new_spanned(
            &s.generics,
            "#[sparse_attention] kernels cannot be generic: the attribute declares one kernel with one spec",
        )),
        other => Err(syn::Error::new_spanned(
            item_keyword(other),
            "#[sparse_attention] applies to a struct, e.g. `struct MyKernel;`, which names the kernel",
        )),
    }
}

/// The leading tokens of an item (its keyword and name), so item errors do not underline a body.
fn item_keyword(item: &syn::Item) -> TokenStream {
    match item {
        syn::Item::Fn(f) => {
            let (fn_token, ident) = (&f.sig.fn_token, &f.sig.ident);
            quote!(#fn_token #ident)
        }
        syn::Item::Enum(e) => {
            let (enum_token, ident) = (&e.enum_token, &e.ident);
            quote!(#enum_token #ident)
        }
        syn::Item::Impl(i) => {
            let impl_token = &i.impl_token;
            quote!(#impl_token)
        }
        syn::Item::Mod(m) => {
            let (mod_token, ident) = (&m.mod_token, &m.ident);
            quote!(#mod_token #ident)
        }
        other => quote!(#other),
    }
}

/// Tokens of an enum value of `minf::codegen`, e.g. `::minf::codegen::Arch::Sm90a`.
fn variant(ty: &str, value: &impl std::fmt::Debug) -> TokenStream {
    let ty = syn::Ident::new(ty, Span::call_site());
    // The derived `Debug` of these field-less enums is the variant's name.
    let value = syn::Ident::new(&format!("{value:?}"), Span::call_site());
    quote!(::minf::codegen::#ty::#value)
}

/// A local name of the generated code. A binding's name is looked up as an item first (a
/// `struct defaults;` or `const arch` in the user's module would turn it into a pattern), whatever
/// its span, so the names carry a prefix no user item is expected to have.
fn local(name: &str) -> syn::Ident {
    syn::Ident::new(&format!("__minf_{name}"), Span::mixed_site())
}

/// `Some(<literal>)` → the literal, `None` → the default's field.
fn field_or_default(value: Option<u32>, field: &str) -> TokenStream {
    let field = syn::Ident::new(field, Span::call_site());
    let defaults = local("defaults");
    match value {
        Some(value) => quote!(#value),
        None => quote!(#defaults.#field),
    }
}

/// The trait impl and the registration of a validated kernel.
fn generate(item: &syn::ItemStruct, kernel: &Kernel) -> TokenStream {
    let ident = &item.ident;
    // `r#Match` is named `Match`.
    let name = ident.unraw().to_string();
    let pattern = variant("Pattern", &kernel.pattern);
    let dtype = variant("DType", &kernel.dtype);
    let fixed_arch = match kernel.arch {
        Some(arch) => {
            let arch = variant("Arch", &arch);
            quote!(::core::option::Option::Some(#arch))
        }
        None => quote!(::core::option::Option::None),
    };
    let head_dim = kernel.head_dim;
    let block_m = field_or_default(kernel.block_m, "block_m");
    let block_n = field_or_default(kernel.block_n, "block_n");
    let warps = field_or_default(kernel.warps, "warps");
    let stages = field_or_default(kernel.stages, "stages");
    let mainloop = match kernel.mainloop {
        Some(mainloop) => {
            let mainloop = variant("Mainloop", &mainloop);
            quote!(::core::option::Option::Some(#mainloop))
        }
        None => quote!(::core::option::Option::None),
    };
    let (arch, fixed, defaults) = (local("arch"), local("fixed"), local("defaults"));
    quote! {
        impl ::minf::SparseAttentionKernel for #ident {
            const NAME: &'static str = #name;
            const PATTERN: ::minf::codegen::Pattern = #pattern;
            const DTYPE: ::minf::codegen::DType = #dtype;
            const FIXED_ARCH: ::core::option::Option<::minf::codegen::Arch> = #fixed_arch;

            fn spec(#arch: ::minf::codegen::Arch) -> ::minf::codegen::KernelSpec {
                let #arch = match Self::FIXED_ARCH {
                    ::core::option::Option::Some(#fixed) => #fixed,
                    ::core::option::Option::None => #arch,
                };
                let #defaults = ::minf::codegen::KernelSpec::default_for(Self::PATTERN, Self::DTYPE, #head_dim, #arch);
                #defaults.retiled((#block_m, #block_n, #warps, #stages), #mainloop)
            }
        }

        ::minf::inventory::submit! {
            ::minf::RegisteredKernel {
                name: #name,
                spec: <#ident as ::minf::SparseAttentionKernel>::spec,
                fixed_arch: <#ident as ::minf::SparseAttentionKernel>::FIXED_ARCH,
            }
        }
    }
}

/// The whole expansion: the item unchanged, followed by the generated code or the compile errors.
fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let item: syn::Item = match syn::parse2(item) {
        Ok(item) => item,
        Err(err) => return err.to_compile_error(),
    };
    let args = match NestedMeta::parse_meta_list(args) {
        Ok(list) => Args::from_list(&list),
        Err(err) => {
            let err = err.to_compile_error();
            return quote!(#item #err);
        }
    };
    let mut errors = Errors::default();
    let item_struct = kernel_struct(&item).map_err(|e| errors.push(e)).ok();
    let args = match args {
        Ok(args) => args,
        Err(err) => {
            let darling_errors = err.write_errors();
            let other = errors.finish().err().map(|e| e.to_compile_error());
            return quote!(#item #darling_errors #other);
        }
    };
    let kernel =
        args.kernel().and_then(|kernel| validate(&args, &kernel).map(|()| kernel)).map_err(|e| errors.push(e)).ok();
    match (item_struct, kernel, errors.finish()) {
        (Some(item_struct), Some(kernel), Ok(())) => {
            let generated = generate(item_struct, &kernel);
            quote!(#item #generated)
        }
        (_, _, result) => {
            let errors = result.err().map(|e| e.to_compile_error());
            quote!(#item #errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(args: TokenStream) -> Result<Kernel, String> {
        let list = NestedMeta::parse_meta_list(args).map_err(|e| e.to_string())?;
        let args = Args::from_list(&list).map_err(|e| e.to_string())?;
        let kernel = args.kernel().map_err(|e| e.to_string())?;
        validate(&args, &kernel).map_err(|e| e.to_string())?;
        Ok(kernel)
    }

    #[test]
    fn defaults_follow_default_for() {
        let k = kernel(quote!(pattern = "dense", head_dim = 128)).unwrap();
        assert_eq!(k.dtype, DType::Bf16);
        assert_eq!(k.arch, None);
        for arch in Arch::ALL {
            assert_eq!(k.spec(*arch), KernelSpec::default_for(Pattern::Dense, DType::Bf16, 128, *arch));
        }
    }

    #[test]
    fn explicit_arguments_override_defaults_and_arch_pins() {
        let k =
            kernel(quote!(pattern = "dense", head_dim = 64, dtype = "f16", block_n = 32, stages = 3, arch = "sm_90a"))
                .unwrap();
        let spec = k.spec(Arch::Sm80);
        assert_eq!(spec.arch, Arch::Sm90a, "a pinned arch ignores the argument");
        assert_eq!((spec.dtype, spec.head_dim, spec.block_n, spec.stages), (DType::F16, 64, 32, 3));
        assert_eq!((spec.block_m, spec.warps), (128, 8));
        assert_eq!(k.targets(), vec![Arch::Sm90a]);
    }

    #[test]
    fn errors_are_helpful() {
        let err = kernel(quote!(pattern = "vertcal_slash", head_dim = 128)).unwrap_err();
        assert!(err.contains("did you mean `vertical_slash`"), "{err}");
        let err = kernel(quote!(pattern = "vertical_slash", head_dim = 128, block_n = 32)).unwrap_err();
        assert!(err.contains("64 or 128 for pattern vertical_slash"), "{err}");
        let err = kernel(quote!(pattern = "dense", head_dim = 80)).unwrap_err();
        assert!(err.contains("allowed 64, 96, 128, 256"), "{err}");
        let err = kernel(quote!(pattern = "dense", head_dim = 128, block_n = -64)).unwrap_err();
        assert_eq!(err, "invalid block_n = -64: allowed 32, 64, 128");
        let err = kernel(quote!(pattern = "dense", head_dim = "128")).unwrap_err();
        assert!(err.contains("expected an integer literal"), "{err}");
        let err = kernel(quote!(pattern = "dense", head_dim = 128, block_m = 64)).unwrap_err();
        assert!(err.contains("`warps` was not given"), "{err}");
        // 136 KiB: fits sm_80 (163 KiB) and sm_90a (227 KiB); 170 KiB only fits sm_90a.
        kernel(quote!(pattern = "dense", head_dim = 128, block_n = 64, warps = 8, stages = 3)).unwrap();
        let err = kernel(quote!(pattern = "dense", head_dim = 128, block_n = 128, warps = 8, stages = 2)).unwrap_err();
        assert!(err.contains("sm_80 allows") && err.contains("add `arch = \"sm_90a\"`"), "{err}");
    }

    #[test]
    fn wgmma_needs_a_hopper_target() {
        let err = kernel(quote!(pattern = "dense", head_dim = 128, mainloop = "wgmma")).unwrap_err();
        assert!(err.contains("wgmma needs sm_90a"), "{err}");
        let spec = kernel(quote!(pattern = "dense", head_dim = 128, mainloop = "wgmma", arch = "sm_90a"))
            .unwrap()
            .spec(Arch::Sm90a);
        assert_eq!(spec.mainloop, Mainloop::Wgmma);
        let err = kernel(quote!(pattern = "dense", head_dim = 128, mainloop = "wmma")).unwrap_err();
        assert!(err.contains("did you mean `wgmma`"), "{err}");
    }

    #[test]
    fn missing_arguments_are_all_reported() {
        let err = kernel(quote!()).unwrap_err();
        assert!(err.contains("missing argument `pattern`"), "{err}");
        let out = expand(
            quote!(),
            quote!(
                struct K;
            ),
        )
        .to_string();
        assert!(out.contains("missing argument `pattern`") && out.contains("missing argument `head_dim`"), "{out}");
    }

    #[test]
    fn non_structs_and_generic_structs_are_rejected() {
        let out = expand(
            quote!(pattern = "dense", head_dim = 128),
            quote!(
                fn kernel() {}
            ),
        )
        .to_string();
        assert!(out.contains("applies to a struct"), "{out}");
        let out = expand(
            quote!(pattern = "dense", head_dim = 128),
            quote!(
                struct K<T>(T);
            ),
        )
        .to_string();
        assert!(out.contains("cannot be generic"), "{out}");
        let out = expand(
            quote!(pattern = "dense", head_dim = 128),
            quote!(
                struct K;
            ),
        )
        .to_string();
        assert!(out.contains("SparseAttentionKernel") && out.contains("submit"), "{out}");
    }
}
