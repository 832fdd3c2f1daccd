from restartpkg.loop import main

main()
