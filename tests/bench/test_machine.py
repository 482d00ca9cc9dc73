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
