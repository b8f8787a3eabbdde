"""Pure domain code shared by the server and the SDK: no I/O, no web or database imports."""
