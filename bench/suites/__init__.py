"""Built-in suite files (YAML). `bench list suites` lists them."""
