module workerpool-operator/plugins/sdk-go

go 1.24
