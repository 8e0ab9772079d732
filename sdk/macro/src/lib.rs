//! The attribute macros of `luna-lambda-sdk`. They only generate glue: the export of
//! `wasi:http/incoming-handler` around a handler function, and the exports of the
//! `luna:lambda/tasks` world around a `Tasks` implementation. Use them through the SDK.

use proc_macro::TokenStream;
use quote::quote;
use syn::{ItemFn, ItemImpl, parse_macro_input};

/// Turns `fn(Request) -> impl IntoResponse` (sync or async) into the lambda's HTTP
/// handler. See `luna_lambda_sdk::handler`.
#[proc_macro_attribute]
pub fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[handler] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    if function.sig.inputs.len() != 1 {
        return syn::Error::new_spanned(
            &function.sig,
            "a handler takes exactly one argument: the request",
        )
        .to_compile_error()
        .into();
    }
    let call = if function.sig.asyncness.is_some() {
        quote!(#name(request).await)
    } else {
        quote!(#name(request))
    };
    quote! {
        #function

        #[doc(hidden)]
        struct __LunaLambdaHandler;

        impl ::luna_lambda_sdk::__private::wasip2::exports::http::incoming_handler::Guest
            for __LunaLambdaHandler
        {
            fn handle(
                request: ::luna_lambda_sdk::__private::wasip2::http::types::IncomingRequest,
                response_out: ::luna_lambda_sdk::__private::wasip2::http::types::ResponseOutparam,
            ) {
                ::luna_lambda_sdk::__private::serve(request, response_out, |request| async move {
                    #call
                });
            }
        }

        ::luna_lambda_sdk::__private::wasip2::http::proxy::export!(
            __LunaLambdaHandler with_types_in ::luna_lambda_sdk::__private::wasip2
        );
    }
    .into()
}

/// Exports an `impl Tasks for T` as the lambda's `split-content` and `execute-subtask`.
/// See `luna_lambda_sdk::tasks`.
#[proc_macro_attribute]
pub fn tasks(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[tasks] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let implementation = parse_macro_input!(item as ItemImpl);
    if implementation.trait_.is_none() {
        return syn::Error::new_spanned(
            &implementation.self_ty,
            "#[tasks] goes on `impl luna_lambda_sdk::Tasks for YourType`",
        )
        .to_compile_error()
        .into();
    }
    let self_ty = &implementation.self_ty;
    quote! {
        #implementation

        #[doc(hidden)]
        type __LunaLambdaTasks = #self_ty;

        #[doc(hidden)]
        mod __luna_lambda_tasks {
            ::luna_lambda_sdk::__private::wit_bindgen::generate!({
                inline: "
                    package luna:lambda-tasks-export;
                    world tasks-exports {
                        export split-content: func(content: string) -> result<list<string>, string>;
                        export execute-subtask: func(content: string) -> result<string, string>;
                    }
                ",
                world: "tasks-exports",
                runtime_path: "::luna_lambda_sdk::__private::wit_bindgen::rt",
            });

            struct Exports;

            impl Guest for Exports {
                fn split_content(content: String) -> Result<Vec<String>, String> {
                    ::luna_lambda_sdk::__private::split_content::<super::__LunaLambdaTasks>(&content)
                }

                fn execute_subtask(content: String) -> Result<String, String> {
                    ::luna_lambda_sdk::__private::execute_subtask::<super::__LunaLambdaTasks>(&content)
                }
            }

            export!(Exports);
        }
    }
    .into()
}
