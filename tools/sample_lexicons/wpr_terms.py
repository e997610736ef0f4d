"""Web-page-ranking lexicons for en de es fr it pt zh (written for this project).

A query has one term from each of four slots (topic, area, city, extra). A page fills each slot
either with the query's term or with another term of the same slot, so the number of query terms
found in title + snippet is exactly the number of slots it copied; the grade is that count
(0 Bad, 1 Fair, 2 Good, 3 Excellent, 4 Perfect). Template words never equal a slot term.
For zh the query terms are space-separated and matched as substrings.
"""

SLOTS: tuple[str, ...] = ("topic", "area", "city", "extra")

WPR: dict[str, dict] = {
    "en": {
        "topic": ["hotel", "restaurant", "museum", "gym", "dentist", "bakery", "cinema",
                  "pharmacy"],
        "area": ["downtown", "airport", "beach", "harbour", "university", "station", "stadium",
                 "riverside"],
        "city": ["Boston", "Denver", "Seattle", "Austin", "Portland", "Dallas", "Miami",
                 "Phoenix"],
        "extra": ["reviews", "prices", "hours", "map", "photos", "menu", "tickets", "parking"],
        "titles": ["{topic} {area} | {city}", "{city}: {topic} near the {area}",
                   "Best {topic} by the {area} in {city}"],
        "snippets": ["Find {extra} and useful tips for your visit. Updated every week.",
                     "See {extra}, directions and more before you go.",
                     "Local guide with {extra} from real visitors."],
    },
    "de": {
        "topic": ["Hotel", "Restaurant", "Museum", "Fitnessstudio", "Zahnarzt", "Bäckerei",
                  "Kino", "Apotheke"],
        "area": ["Zentrum", "Flughafen", "Strand", "Hafen", "Universität", "Bahnhof", "Stadion",
                 "Altstadt"],
        "city": ["Hamburg", "Leipzig", "Dresden", "Bremen", "Hannover", "Stuttgart", "Nürnberg",
                 "Freiburg"],
        "extra": ["Bewertungen", "Preise", "Öffnungszeiten", "Karte", "Fotos", "Speisekarte",
                  "Tickets", "Parken"],
        "titles": ["{topic} {city} {area}", "{city}: {topic} nahe {area}",
                   "{topic} in {city} ({area})"],
        "snippets": ["Hier finden Sie {extra} und nützliche Tipps. Jede Woche aktualisiert.",
                     "{extra}, Anfahrt und mehr auf einen Blick.",
                     "Lokaler Ratgeber mit {extra} von echten Besuchern."],
    },
    "es": {
        "topic": ["hotel", "restaurante", "museo", "gimnasio", "dentista", "panadería", "cine",
                  "farmacia"],
        "area": ["centro", "aeropuerto", "playa", "puerto", "universidad", "estación", "estadio",
                 "catedral"],
        "city": ["Valencia", "Bilbao", "Málaga", "Granada", "Zaragoza", "Alicante", "Córdoba",
                 "Valladolid"],
        "extra": ["opiniones", "precios", "horarios", "mapa", "fotos", "carta", "entradas",
                  "aparcamiento"],
        "titles": ["{topic} {area} | {city}", "{city}: {topic} cerca de {area}",
                   "{topic} en {city}, zona {area}"],
        "snippets": ["Consulta {extra} y consejos útiles para tu visita. Actualizado cada semana.",
                     "Mira {extra}, cómo llegar y mucho más.",
                     "Guía local con {extra} de visitantes reales."],
    },
    "fr": {
        "topic": ["hôtel", "restaurant", "musée", "dentiste", "boulangerie", "cinéma",
                  "pharmacie", "piscine"],
        "area": ["centre", "aéroport", "plage", "port", "université", "gare", "stade",
                 "cathédrale"],
        "city": ["Marseille", "Toulouse", "Nantes", "Bordeaux", "Lille", "Nice", "Strasbourg",
                 "Rennes"],
        "extra": ["avis", "prix", "horaires", "plan", "photos", "menu", "billets", "parking"],
        "titles": ["{topic} {area} | {city}", "{city} : {topic} près de {area}",
                   "{topic} à {city}, quartier {area}"],
        "snippets": ["Consultez {extra} et nos conseils pour votre visite. Mis à jour chaque "
                     "semaine.", "Voir {extra}, l'itinéraire et bien plus encore.",
                     "Guide local avec {extra} de vrais visiteurs."],
    },
    "it": {
        "topic": ["hotel", "ristorante", "museo", "palestra", "dentista", "panetteria", "cinema",
                  "farmacia"],
        "area": ["centro", "aeroporto", "spiaggia", "porto", "università", "stazione", "stadio",
                 "duomo"],
        "city": ["Torino", "Bologna", "Firenze", "Napoli", "Genova", "Verona", "Palermo", "Bari"],
        "extra": ["recensioni", "prezzi", "orari", "mappa", "foto", "menù", "biglietti",
                  "parcheggio"],
        "titles": ["{topic} {area} | {city}", "{city}: {topic} vicino a {area}",
                   "{topic} a {city}, zona {area}"],
        "snippets": ["Scopri {extra} e consigli utili per la tua visita. Aggiornato ogni "
                     "settimana.", "Guarda {extra}, indicazioni stradali e molto altro.",
                     "Guida locale con {extra} di visitatori reali."],
    },
    "pt": {
        "topic": ["hotel", "restaurante", "museu", "ginásio", "dentista", "padaria", "cinema",
                  "farmácia"],
        "area": ["centro", "aeroporto", "praia", "marina", "universidade", "estação", "estádio",
                 "ribeira"],
        "city": ["Braga", "Faro", "Aveiro", "Évora", "Viseu", "Setúbal", "Guimarães", "Funchal"],
        "extra": ["opiniões", "preços", "horários", "mapa", "fotos", "ementa", "bilhetes",
                  "estacionamento"],
        "titles": ["{topic} {area} | {city}", "{city}: {topic} perto de {area}",
                   "{topic} em {city}, zona {area}"],
        "snippets": ["Veja {extra} e dicas úteis para a sua visita. Atualizado todas as "
                     "semanas.", "Consulte {extra}, direções e muito mais.",
                     "Guia local com {extra} de visitantes reais."],
    },
    "zh": {
        "topic": ["酒店", "餐厅", "博物馆", "健身房", "牙医", "面包店", "电影院", "药店"],
        "area": ["市中心", "机场", "海滩", "港口", "大学", "火车站", "体育场", "老城区"],
        "city": ["北京", "上海", "广州", "深圳", "成都", "杭州", "南京", "西安"],
        "extra": ["评价", "价格", "营业时间", "地图", "照片", "菜单", "门票", "停车"],
        "titles": ["{city}{area}附近的{topic}", "{topic}推荐：{city}{area}",
                   "{city}最受欢迎的{topic}（{area}）"],
        "snippets": ["查看{extra}和实用建议，每周更新。", "提供{extra}、路线等详细信息。",
                     "本地指南，收录真实游客的{extra}。"],
    },
}
