// The Pod sandbox program of the real test node (images/pause/Dockerfile).
module workerpool.dev/images/pause

go 1.26.0
