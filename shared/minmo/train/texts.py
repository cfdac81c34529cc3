"""What the synthetic users say: spoken questions with a checkable answer, open instructions, and sentences.

Questions come from templates over small fact tables, each with the words a correct reply contains
(`gold`), so `minmo eval qa` can score replies without a judge model. Every fact is phrased in several
ways. Facts are split deterministically into train and held-out sets (by a hash of the fact, not the
phrasing), so held-out questions are never heard in training in any wording.

The sentences for the ASR task are the questions and instructions themselves plus the text LLM's own
answers (written by `minmo data build`), which widens the vocabulary beyond the templates.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

HELD_OUT_PERCENT = 15  # share of facts kept out of training entirely


@dataclass(frozen=True)
class Question:
    """One phrasing of a question; `fact` identifies what is asked, whatever the wording."""

    text: str
    fact: str
    gold: tuple[str, ...]  # a reply is right when it contains any of these (case-insensitive)


CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa", "Australia": "Canberra",
    "England": "London", "Greece": "Athens", "Portugal": "Lisbon", "Ireland": "Dublin", "Norway": "Oslo",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw",
    "Austria": "Vienna", "Hungary": "Budapest", "Kenya": "Nairobi", "Peru": "Lima", "Argentina": "Buenos Aires",
    "Mexico": "Mexico City", "India": "New Delhi", "Thailand": "Bangkok", "South Korea": "Seoul",
    "Turkey": "Ankara", "Belgium": "Brussels", "the Netherlands": "Amsterdam", "Cuba": "Havana",
    "Chile": "Santiago", "Brazil": "Brasilia", "Vietnam": "Hanoi", "Iran": "Tehran", "Iraq": "Baghdad",
    "Scotland": "Edinburgh", "Switzerland": "Bern", "Czechia": "Prague",
}
CAPITAL_TEMPLATES = (
    "What is the capital of {x}?",
    "Can you tell me the capital of {x}?",
    "Which city is the capital of {x}?",
)

NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)
ARITHMETIC_TEMPLATES = (
    "What is {a} plus {b}?",
    "How much is {a} plus {b}?",
    "What do you get when you add {a} and {b}?",
)

FACTS = {
    "sky": (("What color is the sky on a clear day?", "What colour is a clear sky?"), ("blue",)),
    "grass": (("What color is grass?", "What colour is fresh grass?"), ("green",)),
    "snow": (("What color is snow?", "What colour is fresh snow?"), ("white",)),
    "banana": (("What color is a ripe banana?", "What colour are bananas?"), ("yellow",)),
    "week": (("How many days are there in a week?", "How many days does a week have?"), ("seven", "7")),
    "year_months": (("How many months are in a year?", "How many months does a year have?"), ("twelve", "12")),
    "spider": (("How many legs does a spider have?", "How many legs do spiders have?"), ("eight", "8")),
    "dog_legs": (("How many legs does a dog have?", "How many legs do dogs have?"), ("four", "4")),
    "largest_planet": (("What is the largest planet in our solar system?", "Which planet is the biggest?"),
                       ("Jupiter",)),
    "red_planet": (("Which planet is known as the red planet?", "What is called the red planet?"), ("Mars",)),
    "moon_planet": (("What do we call the natural satellite of the Earth?", "What orbits the Earth every month?"),
                    ("moon",)),
    "cow": (("What animal says moo?", "Which animal goes moo?"), ("cow",)),
    "cat": (("What animal says meow?", "Which animal goes meow?"), ("cat", "kitten")),
    "water_freeze": (("At what temperature in Celsius does water freeze?", "What is the freezing point of water?"),
                     ("zero", "0", "32")),
    "water_formula": (("What is the chemical formula of water?", "What is water made of?"), ("H2O", "hydrogen")),
    "romeo": (("Who wrote Romeo and Juliet?", "Who is the author of Romeo and Juliet?"), ("Shakespeare",)),
    "mona_lisa": (("Who painted the Mona Lisa?", "Which artist painted the Mona Lisa?"), ("Leonardo", "Vinci")),
    "sun_rise": (("In which direction does the sun rise?", "Where does the sun come up?"), ("east",)),
    "largest_ocean": (("What is the largest ocean on Earth?", "Which ocean is the biggest?"), ("Pacific",)),
    "hot_opposite": (("What is the opposite of hot?", "What is the opposite of the word hot?"), ("cold",)),
    "up_opposite": (("What is the opposite of up?", "What is the opposite of the word up?"), ("down",)),
    "day_opposite": (("What is the opposite of day?", "What is the opposite of the word day?"), ("night",)),
    "bees": (("What do bees make?", "What sweet food do bees produce?"), ("honey",)),
    "tallest_animal": (("What is the tallest animal in the world?", "Which animal is the tallest?"), ("giraffe",)),
    "largest_animal": (("What is the largest animal on Earth?", "Which animal is the biggest in the world?"),
                       ("whale",)),
    "fastest_land": (("What is the fastest land animal?", "Which land animal runs the fastest?"), ("cheetah",)),
    "hours_day": (("How many hours are in a day?", "How many hours does a day have?"), ("24", "twenty-four",
                                                                                        "twenty four")),
    "boiling": (("At what temperature does water boil in Celsius?", "What is the boiling point of water?"),
                ("100", "hundred", "212")),
    "photosynthesis": (("What gas do plants take in from the air?", "What gas do plants absorb?"),
                       ("carbon dioxide", "CO2")),
    "breathe": (("What gas do humans need to breathe?", "What gas do we breathe in to live?"), ("oxygen",)),
}

INSTRUCTIONS = (
    "Tell me a fun fact about cats.",
    "Give me a tip for sleeping better.",
    "Say something nice about the weather.",
    "Tell me a short joke.",
    "Describe a sunny beach in one sentence.",
    "What should I cook for dinner tonight?",
    "Suggest a name for a pet dog.",
    "Explain what a rainbow is.",
    "Give me one reason to drink water.",
    "Tell me how to make a cup of tea.",
    "What is a good way to start the morning?",
    "Recommend a hobby for a rainy day.",
    "Explain why the sea is salty.",
    "Tell me something interesting about the ocean.",
    "How do I stay focused while studying?",
    "What is your favourite season and why?",
    "Give me a short piece of advice.",
    "Describe a forest in autumn.",
    "Why do we need sleep?",
    "How can I be more productive today?",
)


def _held_out(fact: str) -> bool:
    return zlib.crc32(fact.encode()) % 100 < HELD_OUT_PERCENT


def all_questions() -> list[Question]:
    """Every phrasing of every fact, in a fixed order."""
    questions = [
        Question(template.format(x=country), f"capital:{country}", (capital,))
        for country, capital in CAPITALS.items()
        for template in CAPITAL_TEMPLATES
    ]
    for a in range(1, 10):
        for b in range(a, 10):
            total = a + b
            gold = (str(total), NUMBER_WORDS[total]) if total < len(NUMBER_WORDS) else (str(total),)
            questions += [
                Question(template.format(a=NUMBER_WORDS[a], b=NUMBER_WORDS[b]), f"add:{a}+{b}", gold)
                for template in ARITHMETIC_TEMPLATES[(a * b) % len(ARITHMETIC_TEMPLATES) :][:1]
            ]
    questions += [Question(text, fact, gold) for fact, (texts, gold) in FACTS.items() for text in texts]
    return questions


def questions(split: str) -> list[Question]:
    """The questions of `split`: "train" or "heldout" (facts never seen in training)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}: expected train or heldout")
    return [q for q in all_questions() if _held_out(q.fact) == (split == "heldout")]


def instructions(split: str) -> list[str]:
    """Open instructions (no checkable answer): all but the last four train, the last four are held out."""
    return list(INSTRUCTIONS[:-4]) if split == "train" else list(INSTRUCTIONS[-4:])


# Open requests for the assistant's spoken replies (`minmo data speech-out --generated`): every template over every
# topic, so the text LLM writes thousands of different short replies for the voice-token LM to learn to speak.
# Topics are split like facts (by a hash of the topic), so held-out replies are about topics never spoken in training.
REPLY_TOPICS = (
    # animals
    "cats", "dogs", "horses", "rabbits", "owls", "eagles", "penguins", "dolphins", "whales", "sharks", "octopuses",
    "elephants", "lions", "tigers", "bears", "wolves", "foxes", "deer", "frogs", "turtles", "snakes", "bees", "ants",
    "butterflies", "spiders", "parrots", "camels", "kangaroos", "koalas", "monkeys", "squirrels", "hedgehogs",
    # food and drink
    "bread", "cheese", "apples", "oranges", "strawberries", "tomatoes", "potatoes", "carrots", "rice", "pasta",
    "soup", "pizza", "chocolate", "ice cream", "honey", "coffee", "tea", "orange juice", "pancakes", "salad",
    "olive oil", "garlic", "mushrooms", "lemons", "breakfast", "picnics", "baking cakes", "spices",
    # places and nature
    "mountains", "rivers", "lakes", "deserts", "forests", "islands", "volcanoes", "waterfalls", "caves", "beaches",
    "the ocean", "the moon", "the stars", "the sun", "clouds", "rain", "snow", "thunderstorms", "wind", "autumn",
    "spring", "summer", "winter", "sunsets", "rainbows", "gardens", "parks", "small villages", "big cities",
    "libraries", "museums", "markets", "train stations", "airports", "lighthouses", "castles", "bridges",
    # activities
    "running", "swimming", "cycling", "walking", "hiking", "yoga", "dancing", "singing", "painting", "drawing",
    "reading", "writing letters", "cooking", "gardening", "fishing", "camping", "photography", "chess", "football",
    "tennis", "learning a language", "playing the piano", "playing the guitar", "knitting", "meditation",
    "travelling by train", "visiting friends", "keeping a diary", "solving puzzles", "bird watching",
    # everyday life
    "sleep", "alarm clocks", "mornings", "evenings", "weekends", "holidays", "birthdays", "homework", "exams",
    "job interviews", "moving house", "saving money", "shopping lists", "cleaning the kitchen", "doing laundry",
    "tidy desks", "houseplants", "umbrellas", "bicycles", "buses", "the weather", "phone calls", "emails",
    "meetings", "deadlines", "neighbours", "grandparents", "teachers", "friendship", "good manners", "patience",
    "kindness", "staying calm", "making decisions", "setting goals", "new habits", "drinking water",
    "healthy eating", "stretching", "fresh air", "taking breaks", "time management",
    # things and ideas
    "books", "maps", "clocks", "candles", "mirrors", "keys", "kites", "balloons", "paper planes", "telescopes",
    "microscopes", "computers", "robots", "rockets", "satellites", "electricity", "magnets", "batteries",
    "the internet", "music", "poetry", "history", "mathematics", "science", "geography", "languages", "colours",
    "numbers", "the alphabet", "the seasons", "gravity", "light", "sound", "water", "fire", "trees", "flowers",
    "seeds", "recycling", "the planets", "dinosaurs", "the pyramids", "ancient Rome", "the Olympic Games",
)
REPLY_TEMPLATES = (
    "Tell me a fun fact about {t}.",
    "Say one short sentence about {t}.",
    "Give me a quick tip about {t}.",
    "What do you like about {t}?",
    "Describe {t} in one sentence.",
    "Explain {t} to a child in a few words.",
    "Why are {t} interesting?",
    "What is one thing people often get wrong about {t}?",
    "Say something kind about {t}.",
    "What would you tell a friend about {t}?",
    "Give me a short reason to think about {t} today.",
    "How would you describe {t} to someone who has never seen them?",
    "Tell me something surprising about {t}.",
    "Share a happy thought about {t}.",
)


def reply_prompts(split: str) -> list[str]:
    """Every open request of `split` ("train" or "heldout": topics never spoken in training), in a fixed shuffled
    order, so the first few hundred already cover many topics and templates."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}: expected train or heldout")
    topics = [t for t in REPLY_TOPICS if _held_out(f"topic:{t}") == (split == "heldout")]
    prompts = [template.format(t=topic) for topic in topics for template in REPLY_TEMPLATES]
    random.Random(f"replies:{split}").shuffle(prompts)
    return prompts
