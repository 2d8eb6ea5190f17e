"""Emulated lab: the lab VMs as systemd-nspawn containers on this one machine.

Each host boots real systemd as PID 1 with sshd inside, in a network namespace
of its own joined to one host bridge, so Ansible and Fabric reach it exactly as
they reach a VM. `app.lab.cli` is the command line (`lab up|down|status|link|ssh`).
"""
