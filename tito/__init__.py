"""`tito`, the TinyTorch command-line tool: find the modules, run their tests, export them, write the student edition."""
