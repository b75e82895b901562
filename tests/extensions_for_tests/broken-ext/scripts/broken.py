"""An extension with a syntax error: reported by name; the server and the other extensions keep working."""

def broken(:
    pass
