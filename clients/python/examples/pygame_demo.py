"""A tiny pygame game with scoreserver: press SPACE (or click) to score while the server's
clock runs; the result comes back without the loop ever waiting on the network.

    python examples/pygame_demo.py --server http://127.0.0.1:8080 --game demo
    SDL_VIDEODRIVER=dummy python examples/pygame_demo.py --auto 5   # headless: 5 presses
"""

from __future__ import annotations

import argparse
import json
import sys

import pygame
from scoreclient import ScoreClient, explain


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument("--game", default="demo")
    parser.add_argument("--name", help="log in as this player (default: play as a guest)")
    parser.add_argument("--password", default="")
    parser.add_argument("--register", action="store_true", help="make the account first")
    parser.add_argument("--auto", type=int, default=0, help="press SPACE this many times by itself")
    args = parser.parse_args()

    pygame.init()
    screen = pygame.display.set_mode((480, 240))
    font = pygame.font.Font(None, 36)
    clock = pygame.time.Clock()
    scores = ScoreClient(args.server, args.game)
    if args.name:
        (scores.register if args.register else scores.login)(args.name, args.password)
    room = scores.enter()
    game = scores.start()
    message = f"{room['duration_ms'] / 1000:g} s: press SPACE!"
    result = None
    frame = 0
    while result is None:
        frame += 1
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                scores.close()
                return 1
            if event.type in (pygame.KEYDOWN, pygame.MOUSEBUTTONDOWN) and game.running:
                game.point()
        if args.auto and game.running and frame % 12 == 0 and game.score < args.auto:
            game.point()  # as a person would, every 12 frames (200 ms at 60 fps)
        for kind, detail in scores.poll():
            if kind == "reject":
                message = detail["words"]
            elif kind == "end":
                message = detail["words"]
            elif kind == "result":
                result = detail
        screen.fill((11, 16, 32))
        screen.blit(font.render(f"score {game.score}", True, (240, 240, 240)), (20, 40))
        screen.blit(font.render(message[:40], True, (180, 200, 255)), (20, 120))
        pygame.display.flip()
        clock.tick(60)
    scores.close()
    pygame.quit()
    words = result.get("words") or (
        "saved" if result.get("saved") else explain(result.get("reason") or "not saved")
    )
    print(json.dumps({**result, "words": words}))
    return 0 if result["accepted"] else 2


if __name__ == "__main__":
    sys.exit(main())
