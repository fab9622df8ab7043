from qinspect.cli import main

main()
