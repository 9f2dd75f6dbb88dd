module workerpool-operator/plugins/examples/deny-latest-go

go 1.24

require workerpool-operator/plugins/sdk-go v0.0.0

replace workerpool-operator/plugins/sdk-go => ../../sdk-go
