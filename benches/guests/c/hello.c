// Benchmark guest: the C hello, against the bindings `wit-bindgen c` generates for
// wasi:http/proxy, built with clang and wasi-libc (what a C author without an SDK writes).
#include "proxy.h"

#include <string.h>

static void set_header(wasi_http_types_borrow_fields_t headers, const char *name,
                       const char *value) {
  wasi_http_types_field_name_t field_name;
  wasi_http_types_field_value_t field_value;
  proxy_string_set(&field_name, name);
  field_value.ptr = (uint8_t *)value;
  field_value.len = strlen(value);
  wasi_http_types_header_error_t error;
  // A constant, valid header: appending cannot fail on syntax.
  wasi_http_types_method_fields_append(headers, &field_name, &field_value, &error);
}

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t response_out) {
  wasi_http_types_incoming_request_drop_own(request);

  wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
  set_header(wasi_http_types_borrow_fields(headers), "content-type", "text/plain");
  wasi_http_types_own_outgoing_response_t response =
      wasi_http_types_constructor_outgoing_response(headers);

  wasi_http_types_own_outgoing_body_t body;
  wasi_http_types_method_outgoing_response_body(
      wasi_http_types_borrow_outgoing_response(response), &body);
  wasi_http_types_result_own_outgoing_response_error_code_t result = {
      .is_err = false, .val = {.ok = response}};
  wasi_http_types_static_response_outparam_set(response_out, &result);

  wasi_http_types_own_output_stream_t stream;
  if (wasi_http_types_method_outgoing_body_write(
          wasi_http_types_borrow_outgoing_body(body), &stream)) {
    static const char text[] = "hello from C\n";
    proxy_list_u8_t contents = {.ptr = (uint8_t *)text, .len = sizeof text - 1};
    wasi_io_streams_stream_error_t error;
    wasi_io_streams_method_output_stream_blocking_write_and_flush(
        wasi_io_streams_borrow_output_stream(stream), &contents, &error);
    wasi_io_streams_output_stream_drop_own(stream);
  }
  wasi_http_types_error_code_t error;
  wasi_http_types_static_outgoing_body_finish(body, NULL, &error);
}
