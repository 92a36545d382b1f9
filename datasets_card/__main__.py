from vividhead.datasets_card.cli import main

main()
