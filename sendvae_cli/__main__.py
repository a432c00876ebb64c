from sendvae_cli.cli import main

main()
