#[test] fn placeholder_mnist_accuracy(){}
