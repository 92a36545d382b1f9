from datasets_card.cli import main

main()
