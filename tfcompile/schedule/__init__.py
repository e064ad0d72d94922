"""Pipeline planner: schedule IR and generators (``actions``, ``generators``; public as
``tfcompile.schedules``), cost profiles (``costs``), the schedule DAG (``dag``), the ASAP
simulator (``simulate``), the HiGHS freeze LP (``lp``) and dumps (``dumps``).

Submodules are imported on demand so that ``import tfcompile.schedule`` stays cheap.
"""
