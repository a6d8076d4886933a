//! The wasi:http handler: `POST` gives the invoice, anything else the usage.

use std::io::{Read as _, Write as _};

use wasip2::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};

wasip2::http::proxy::export!(JsonApi);

struct JsonApi;

impl wasip2::exports::http::incoming_handler::Guest for JsonApi {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let post_body = matches!(request.method(), Method::Post).then(|| read_body(&request));
        let (status, content_type, body) = crate::answer(post_body);
        let headers = Fields::from_list(&[("content-type".to_string(), content_type.as_bytes().to_vec())]).unwrap();
        let response = OutgoingResponse::new(headers);
        response.set_status_code(status).unwrap();
        let out = response.body().unwrap();
        ResponseOutparam::set(response_out, Ok(response));
        let mut stream = out.write().unwrap();
        stream.write_all(&body).unwrap();
        stream.flush().unwrap();
        drop(stream);
        OutgoingBody::finish(out, None).unwrap();
    }
}

fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let body = request.consume().map_err(|()| "no request body\n".to_string())?;
    let mut bytes = Vec::new();
    body.stream().unwrap().read_to_end(&mut bytes).map_err(|e| format!("cannot read the body: {e}\n"))?;
    Ok(bytes)
}
