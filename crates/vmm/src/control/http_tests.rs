use super::*;

fn done(input: &str) -> Parsed {
    match parse_head(input.as_bytes(), 100) {
        Head::Done(p) => p,
        _ => panic!("not complete: {input:?}"),
    }
}

#[test]
fn heads_and_bodies_are_taken_whole() {
    let p = done("PUT /vm HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET");
    assert_eq!((p.method.as_str(), p.path.as_str()), ("PUT", "/vm"));
    assert_eq!(p.body, b"abcd");
    assert_eq!(p.consumed, 43);
    assert!(!p.close);
    assert!(done("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").close);
    assert!(done("GET / HTTP/1.0\r\n\r\n").close, "HTTP/1.0 closes");
    assert!(matches!(
        parse_head(b"GET / HTTP/1.1\r\n", 100),
        Head::Incomplete
    ));
    assert!(matches!(
        parse_head(
            b"PUT / HTTP/1.1\r\nContent-Length: 9\r\nExpect: 100-continue\r\n\r\nab",
            100
        ),
        Head::WaitBody {
            expect_continue: true
        }
    ));
}

#[test]
fn oversize_malformed_and_chunked_requests_are_rejected() {
    let status = |input: &[u8]| match parse_head(input, 100) {
        Head::Reject(r) => r.status,
        _ => 0,
    };
    assert_eq!(
        status(b"PUT / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"),
        413
    );
    assert_eq!(status(b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
    assert_eq!(
        status(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400
    );
    assert_eq!(status(b"\x00\x01 junk\r\n\r\n"), 400);
    let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
    long.resize(MAX_HEAD + 10, b'a');
    assert_eq!(status(&long), 400);
}

#[test]
fn responses_render_as_http() {
    let ok = String::from_utf8(render(
        &ApiResponse::ok(&serde_json::json!({"a": 1})),
        false,
    ))
    .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.ends_with("Content-Length: 7\r\n\r\n{\"a\":1}"), "{ok}");
    let nc = String::from_utf8(render(&ApiResponse::no_content(), true)).unwrap();
    assert_eq!(
        nc,
        "HTTP/1.1 204 No Content\r\nServer: Tsubame\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn a_server_answers_over_its_socket_and_removes_it() {
    let dir = std::env::temp_dir().join(format!("tsubame-http-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let (server, link) = start(&dir, DEFAULT_MAX_BODY).unwrap();
    assert!(matches!(
        start(&dir, DEFAULT_MAX_BODY),
        Err(Error::Exists(_))
    ));
    let vmm = std::thread::spawn(move || {
        // The VMM side: wait for one request and answer it.
        loop {
            if let Some(req) = link.next() {
                assert_eq!(req, ApiRequest::Describe);
                link.respond(ApiResponse::ok(&serde_json::json!({"state": "x"})));
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let mut s = UnixStream::connect(&dir).unwrap();
    // Two requests on one connection: a bad one answered by the API thread
    // alone, then one for the VMM.
    s.write_all(b"GET /nope HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    vmm.join().unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(
        out.contains("HTTP/1.1 200 OK") && out.ends_with("{\"state\":\"x\"}"),
        "{out}"
    );
    drop(server);
    assert!(!dir.exists());
}
