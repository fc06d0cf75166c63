#[test] fn placeholder_examples_current(){}
