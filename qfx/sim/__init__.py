"""Simulators: C simulation (g++ + ap_types) and RTL co-simulation (cocotb + Verilator)."""
