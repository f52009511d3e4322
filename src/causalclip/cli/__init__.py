"""The ``causalclip`` command, one module per subcommand. Each defines ``register(sub)``, which adds its parser(s)
and sets ``func`` to a function of the parsed arguments returning an exit code; ``cli.main`` lists them in help
order. Library code never imports from here."""
