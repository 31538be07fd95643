from rbee.keeper.main import run

run()
