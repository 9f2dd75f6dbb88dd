package spacelift

deny["you shall not pass"] {
    false
}
