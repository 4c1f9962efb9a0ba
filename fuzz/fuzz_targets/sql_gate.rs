//! The one gate every SQL text passes (HTTP, the Postgres simple and extended protocols,
//! cursors). Never a panic, and nothing it admits is a write.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vendflow_sqlgate::{Admitted, admit};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(statements) = admit(sql) {
        for statement in statements {
            if let Admitted::Query(q) = &statement {
                let text = q.to_string().to_ascii_uppercase();
                for verb in ["INSERT ", "UPDATE ", "DELETE ", "DROP ", "CREATE ", "COPY "] {
                    assert!(
                        !text.starts_with(verb),
                        "admitted a write: {sql:?} as {text}"
                    );
                }
            }
        }
    }
});
