from nonllama.cli import app

app()
