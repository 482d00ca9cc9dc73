"""The machine a figure was measured on, told apart beyond its model name."""

from scanside.bench.machine import cpu_info, cpu_label, host_class


def test_host_class_names_the_best_matrix_unit():
    assert host_class({"avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"}) == "x86-amx"
    assert host_class({"avx2", "avx512f", "avx512_vnni"}) == "x86-avx512-vnni"
    assert host_class({"avx2", "avx_vnni"}) == "x86-avx-vnni"
    assert host_class({"avx2", "fma"}) == "x86-avx2"
    assert host_class({"asimd", "asimddp"}) == "arm64-dotprod"  # Jetson Orin's Cortex-A78AE
    assert host_class(set(), "riscv64") == "riscv64"


def test_this_machine_is_labelled_with_its_numbers():
    cpu = cpu_info()
    label = cpu_label(cpu)
    assert cpu["host_class"] in label and str(cpu["usable_cores"]) in label
    ident = cpu["id"]
    if "cpu_family" in ident:  # x86 Linux: /proc/cpuinfo has them
        assert f"family {ident['cpu_family']} model {ident['model']}" in label


def test_the_peak_is_the_better_of_a_matmul_and_a_convolution():
    """One MatMul under-read a host whose convolutions ran faster: stages read above 100 %."""
    from scanside.bench.peak import measure

    peak = measure(repeat=1, threads=1)
    assert peak["gflops"] == max(peak["matmul_gflops"], peak["conv_gflops"]) > 0
    assert "MatMul" in peak["how"] and "Conv" in peak["how"]
