//go:build wasip1

package sdk

import "unsafe"

// The ABI shim: the only place in the package that touches raw memory. Buffers are kept
// reachable in `pinned` so the garbage collector never frees memory the host still reads; the
// operator discards the whole instance after one call.

var pinned [][]byte

//go:wasmexport workerpool_abi_v1
func workerpoolABIv1() {}

//go:wasmexport alloc
func alloc(size int32) int32 {
	buf := make([]byte, size)
	pinned = append(pinned, buf)
	if size == 0 {
		return 0
	}
	return int32(uintptr(unsafe.Pointer(&buf[0])))
}

//go:wasmexport validate_settings
func validateSettings(ptr, size int32) int64 {
	return pack(ValidateSettings(input(ptr, size)))
}

//go:wasmexport evaluate
func evaluate(ptr, size int32) int64 {
	return pack(Evaluate(input(ptr, size)))
}

func input(ptr, size int32) []byte {
	if size == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), size)
}

func pack(out []byte) int64 {
	pinned = append(pinned, out)
	if len(out) == 0 {
		return 0
	}
	ptr := uint64(uintptr(unsafe.Pointer(&out[0])))
	return int64(ptr<<32 | uint64(len(out)))
}
