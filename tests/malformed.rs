#[test] fn placeholder_malformed(){}
